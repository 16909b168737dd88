//! The `gatehouse` binary.

fn main() -> std::process::ExitCode {
    gatehouse_gateway::cli::main()
}
