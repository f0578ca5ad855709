"""A task module that cannot be imported: its code raises at import time
(as a module might with a bad setting or a missing service)."""

raise RuntimeError("this module refuses to load")
