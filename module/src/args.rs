//! A cursor over command arguments, in the manner of mini-redis's `Parse`:
//! every value is taken with a name that appears in the error if it is
//! missing or malformed, and `finish()` rejects leftovers.

use crate::core::error::{shown, VtError, VtResult};

pub struct Args<'a> {
    items: &'a [&'a [u8]],
    pos: usize,
}

impl<'a> Args<'a> {
    pub fn new(items: &'a [&'a [u8]]) -> Self {
        Args { items, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.items.len()
    }

    /// Index of the next argument.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.items.len().saturating_sub(self.pos)
    }

    /// The next argument, whatever it is.
    pub fn next_bytes(&mut self, what: &str) -> VtResult<&'a [u8]> {
        let item = self
            .items
            .get(self.pos)
            .ok_or_else(|| VtError::syntax(format!("missing {what}")))?;
        self.pos += 1;
        Ok(item)
    }

    /// An integer within `[min, max]`.
    pub fn next_int(&mut self, what: &'static str, min: i64, max: i64) -> VtResult<i64> {
        let raw = self.next_bytes(what)?;
        parse_int(raw, what, min, max)
    }

    /// The next argument upper-cased, if there is one, for option matching
    /// (and for error messages: as `shown`).
    pub fn next_keyword(&mut self) -> Option<String> {
        let item = self.items.get(self.pos)?;
        self.pos += 1;
        Some(shown(item).to_ascii_uppercase())
    }

    /// Takes the next argument if it is `keyword` (any case).
    pub fn take_keyword(&mut self, keyword: &str) -> bool {
        let matched = self.peek_is(keyword);
        if matched {
            self.pos += 1;
        }
        matched
    }

    /// Looks at the next argument without taking it.
    pub fn peek_is(&self, keyword: &str) -> bool {
        self.items
            .get(self.pos)
            .is_some_and(|item| item.eq_ignore_ascii_case(keyword.as_bytes()))
    }

    /// Fails if any argument is left over.
    pub fn finish(&self) -> VtResult<()> {
        match self.items.get(self.pos) {
            None => Ok(()),
            Some(extra) => Err(VtError::syntax(format!(
                "unexpected argument '{}'",
                shown(extra)
            ))),
        }
    }
}

pub fn parse_int(raw: &[u8], what: &'static str, min: i64, max: i64) -> VtResult<i64> {
    let value: i64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(VtError::NotAnInteger(what))?;
    if value < min || value > max {
        return Err(VtError::OutOfRange { what, min, max });
    }
    Ok(value)
}

/// Error for an option name the command does not know.
pub fn unknown_option(name: &str) -> VtError {
    VtError::syntax(format!("unknown option '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_checked_for_form_and_range() {
        let items: Vec<&[u8]> = vec![b"12", b"x", b"-1", b"99999999999999999999"];
        let mut args = Args::new(&items);
        assert_eq!(args.next_int("COUNT", 0, 100).unwrap(), 12);
        assert_eq!(
            args.next_int("COUNT", 0, 100),
            Err(VtError::NotAnInteger("COUNT"))
        );
        assert!(matches!(
            args.next_int("COUNT", 0, 100),
            Err(VtError::OutOfRange { .. })
        ));
        assert_eq!(
            args.next_int("COUNT", 0, 100),
            Err(VtError::NotAnInteger("COUNT"))
        );
        assert!(args.is_empty());
        assert!(args.next_bytes("id").is_err());
    }

    #[test]
    fn leftovers_are_refused() {
        let items: Vec<&[u8]> = vec![b"a", b"b"];
        let mut args = Args::new(&items);
        args.next_bytes("a").unwrap();
        assert!(args.finish().unwrap_err().to_string().contains("'b'"));
    }
}
