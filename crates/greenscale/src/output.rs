//! Standard output for the commands: a reader that goes away (a closed pipe, as with
//! `greenscale status --json | head`) ends the program quietly, as Unix tools do, instead of
//! a panic.

use std::io::Write;

/// Prints one line (used by [`say!`]). Exits with status 0 when standard output is a closed
/// pipe; any other write error is reported and exits with status 1.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the commands' output, quiet on a closed pipe (see [`line`]).
macro_rules! say {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
