//! The `meridian` binary: parse config, start the server.

use clap::Parser;
use meridian::config::{Cli, Command, Config};
use meridian::server::Server;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Certs { out, regions }) = &cli.command {
        let names: Vec<&str> = regions.iter().map(String::as_str).collect();
        match meridian_replication::transport::quic::write_deployment(out, &names) {
            Ok(()) => {
                println!(
                    "wrote certificates for {} into {}",
                    regions.join(","),
                    out.display()
                );
                return;
            }
            Err(e) => {
                eprintln!("meridian certs: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Some(Command::Invalidate {
        brokers,
        topic,
        version,
        keys,
    }) = &cli.command
    {
        match meridian::kafka::produce(brokers, topic, keys, *version) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("meridian invalidate: {e}");
                std::process::exit(1);
            }
        }
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meridian: {e}");
            std::process::exit(2);
        }
    };
    if !meridian::memory::set_background_thread(config.jemalloc_bg_thread) {
        eprintln!("meridian: jemalloc-bg-thread could not be set (continuing)");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move {
        let io_threads = match config.io_threads {
            0 => meridian::config::default_io_threads(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            n => n,
        };
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        server.spawn_io_threads(io_threads.saturating_sub(1))?;
        // Tests and scripts read these lines to learn the ports (e.g. with --port 0): the
        // TLS port's first, then the plain port's (the TLS port's again if there is none).
        if let Some(tls) = server.tls_local_addr() {
            println!("meridian tls listening on {tls}");
        }
        println!("meridian listening on {addr}");
        tracing::info!(%addr, "ready to accept connections");
        tokio::select! {
            r = server.run() => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    if let Err(e) = result {
        eprintln!("meridian: {e}");
        std::process::exit(1);
    }
}
