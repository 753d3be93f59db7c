//! The ComfyUI simulator (temporary interface stub; replaced by the simulator work).

/// Simulator arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Port.
    #[arg(long, default_value_t = 8188)]
    pub port: u16,
}

/// Run the simulator.
pub async fn run_cli(_args: SimArgs) -> std::io::Result<()> {
    Err(std::io::Error::other("not built yet"))
}
