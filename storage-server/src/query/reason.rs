//! Why a frame of a query result has no function name, as a field of its own.
//!
//! The reason travels inside the frame's name (so that every output, pprof included, shows it):
//! `libfoo.so+0x1234 (no symbols: stripped, no debuginfo)` from query-time symbolization (see
//! [`Reason::describe`]), `[truncated: stack copy exhausted]` or `[unwind failed: …]` from the
//! agent's unwinder. The JSON APIs also give it as a `reason` code next to the name, so that a
//! client does not have to parse names: this module reads it back. Only the exact texts Kiln writes
//! are recognized, so a function that happens to be called `[truncated: x]` is the only way to fool
//! it.

use super::symbolize::Reason;

/// A machine-readable reason code for a frame name, `None` for a named frame.
pub fn of_name(name: &str) -> Option<&'static str> {
    if name.starts_with("[truncated: ") && name.ends_with(']') {
        return Some("truncated");
    }
    if name.starts_with("[unwind failed: ") && name.ends_with(']') {
        return Some("unwind_failed");
    }
    let inner = name.strip_suffix(')')?;
    let at = inner.rfind(" (no symbols: ")?;
    let text = &inner[at + 2..];
    Reason::ALL
        .into_iter()
        .find(|r| r.describe() == text)
        .map(Reason::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_every_reason_the_server_writes() {
        for r in Reason::ALL {
            let name = format!("libc.so.6+0x1234 ({})", r.describe());
            assert_eq!(of_name(&name), Some(r.as_str()), "{name}");
        }
        assert_eq!(
            of_name("0x7f00 (no symbols: stripped, no debuginfo)"),
            Some("stripped")
        );
    }

    #[test]
    fn reads_the_agents_unwind_frames() {
        assert_eq!(
            of_name("[truncated: stack copy exhausted]"),
            Some("truncated")
        );
        assert_eq!(of_name("[truncated: too many frames]"), Some("truncated"));
        assert_eq!(
            of_name("[unwind failed: frame pointer moved backwards]"),
            Some("unwind_failed")
        );
    }

    #[test]
    fn named_frames_have_no_reason() {
        for name in [
            "main",
            "std::vec::Vec<T>::push",
            "hot [k]",
            "f (no symbols: made up)",
            "operator()",
            "(other)",
        ] {
            assert_eq!(of_name(name), None, "{name}");
        }
    }
}
