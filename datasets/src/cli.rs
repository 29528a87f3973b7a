//! What the toolkit's command-line programs (`sparsify`, `engine`, `datasets`, `experiments`)
//! share beyond data: behaving like Unix tools when their output is cut short.

/// Exit status of a program whose output pipe was closed: 128 + SIGPIPE, what a shell reports
/// for a tool that the signal stopped.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Makes the program exit quietly, with `BROKEN_PIPE_EXIT`, when standard output is a pipe that
/// was closed (`engine info ... | head -3`). Rust ignores SIGPIPE, so the write fails instead,
/// and `println!` turns the failure into a panic with a backtrace; this hook, installed first
/// thing in `main`, ends the program there instead and leaves every other panic as it was.
pub fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(is_broken_stdout) {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info)
    }));
}

/// Whether a panic message is the standard library's for a write to a closed standard output.
fn is_broken_stdout(message: &str) -> bool {
    message.starts_with("failed printing to stdout") && message.to_ascii_lowercase().contains("broken pipe")
}

#[cfg(test)]
mod tests {
    use super::is_broken_stdout;

    #[test]
    fn only_a_write_to_a_closed_stdout_is_recognised() {
        assert!(is_broken_stdout("failed printing to stdout: Broken pipe (os error 32)"));
        assert!(!is_broken_stdout("failed printing to stdout: No space left on device (os error 28)"));
        assert!(!is_broken_stdout("index out of bounds: the len is 3 but the index is 7"));
    }
}
