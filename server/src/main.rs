//! The `tsunagu-server` binary: parses the command line and hands over to the library.

use tsunagu_server::config::{Cli, Command};

// The backup and restore commands (binary only: the server library does not
// need them).
mod backup;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::load()?;
    tsunagu_server::init_logging(cli.serve.log_format);
    match cli.command {
        Some(Command::Account(cmd)) => tsunagu_server::operator::run(&cli.serve.storage, cmd).await,
        Some(Command::Backup(args)) => backup::backup(&cli.serve, args).await,
        Some(Command::Restore(args)) => backup::restore(&cli.serve, args).await,
        Some(Command::Audit(cmd)) => tsunagu_server::audit::run(&cli.serve.storage, cmd).await,
        None => {
            let listen = cli.serve.listen;
            let server = tsunagu_server::Server::prepare(cli.serve).await?;
            let listener = tokio::net::TcpListener::bind(listen).await?;
            // Scripts and tests read this line to learn the port; it comes
            // once the database is ready.
            println!("tsunagu listening on http://{}", listener.local_addr()?);
            server.serve(listener, tsunagu_server::shutdown_signal()).await
        }
    }
}
