//! PyO3 bindings land with the client issue; this crate holds their place in the workspace.
