use std::process::ExitCode;

fn main() -> ExitCode {
    zolog::cli::main()
}
