//! Printing command output the way Unix tools do: a reader that goes away (`| head`) ends
//! the output quietly instead of a panic.

use std::io::Write;

/// Writes `text` to stdout; a closed pipe stops the output silently.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing the output: {e}");
        }
    }
}
