// SPDX-License-Identifier: Apache-2.0
//! Printing an error with its causes on one line.
//!
//! vmpod's error types say only what failed at their own level and leave
//! the cause to `source()`, so a message never repeats its cause. Where an
//! error leaves the process as one line (a ttrpc status, a log field, a CLI
//! error), [`Chain`] prints the whole chain, joined by `": "`.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by `": "`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The one-line form of `error` and its causes; see [`Chain`].
pub fn chain(error: &(dyn Error + 'static)) -> String {
    Chain(error).to_string()
}

/// The first paragraph of a multi-line message (a CLI parser's error with
/// its usage after a blank line) as one line, its lines trimmed and joined
/// by spaces.
pub fn first_paragraph(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    lines.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|inner| inner as &(dyn Error + 'static))
        }
    }

    #[test]
    fn test_chain_joins_every_cause_once() {
        let error = Layer(
            "starting the pod",
            Some(Box::new(Layer(
                "opening the tap",
                Some(Box::new(Layer("busy", None))),
            ))),
        );
        assert_eq!(chain(&error), "starting the pod: opening the tap: busy");
    }

    #[test]
    fn test_chain_of_an_error_without_source_is_its_message() {
        assert_eq!(chain(&Layer("busy", None)), "busy");
    }

    #[test]
    fn test_first_paragraph_is_one_line() {
        assert_eq!(
            first_paragraph("error: bad flag\n  tip: see\n\nUsage: x\n"),
            "error: bad flag tip: see"
        );
    }
}
