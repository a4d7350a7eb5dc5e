//! `tiketi-operator run | crd | simulate`. Thin: parsing, logging, signals; the work is in the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tiketi_operator::leader::LeaderConfig;
use tiketi_operator::runtime::{RunOptions, run};

#[derive(Debug, Parser)]
#[command(
    name = "tiketi-operator",
    version,
    about = "Runs ticket on-sales on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator (controller, leader election, /metrics /healthz /readyz).
    Run(RunArgs),
    /// Print the TicketingEvent CustomResourceDefinition as YAML (what crds/ holds).
    Crd,
    /// Replay a queue-depth trace through the scaling policy and a KEDA + HPA model.
    Simulate(tiketi_operator::simulate::SimulateArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TIKETI_NAMESPACE")]
    namespace: Option<String>,
    /// Read Secrets only in these namespaces (comma-separated; default: wherever events are
    /// watched). An event elsewhere is InvalidSpec naming the rule; RBAC can then grant Secret
    /// reads per namespace (chart value `secretNamespaces`).
    #[arg(long, env = "TIKETI_SECRET_NAMESPACES", value_delimiter = ',')]
    secret_namespaces: Vec<String>,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "TIKETI_METRICS_ADDR", default_value = "[::]:9090")]
    metrics_addr: SocketAddr,
    /// Elect a leader on a Lease so several replicas are safe (only the leader writes).
    #[arg(long, env = "TIKETI_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace from POD_NAMESPACE, else "default").
    #[arg(long, env = "TIKETI_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "TIKETI_LEASE_NAME", default_value = "tiketi-operator")]
    lease_name: String,
    /// This replica's identity (default: POD_NAME, else host name and process id).
    #[arg(long, env = "TIKETI_IDENTITY")]
    identity: Option<String>,
    /// Log format (default: json when stderr is not a terminal).
    #[arg(long, env = "TIKETI_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Bound of one signal read (Redis pipeline, Prometheus query), e.g. 1s.
    #[arg(long, env = "TIKETI_SIGNAL_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    signal_timeout: std::time::Duration,
    /// Least time between two status writes that only carry new queueDepth/activeUsers values
    /// (health flips, belowSince and soldOutAt are written at once), e.g. 5s.
    #[arg(long, env = "TIKETI_STATUS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    status_interval: std::time::Duration,
    /// PEM bundle of the certificate authorities that sign TLS Redis servers (events with
    /// `redis.tls: true`). Default: the public web roots built in (they include Amazon's, which
    /// sign ElastiCache's certificates).
    #[arg(long, env = "TIKETI_REDIS_CA_FILE")]
    redis_ca_file: Option<std::path::PathBuf>,
}

fn init_logging(format: Option<LogFormat>) {
    let json = format.map(|f| matches!(f, LogFormat::Json));
    tiketi_shared::telemetry::init_with("info,kube=warn", json);
}

fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "tiketi".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    match command {
        Command::Crd => {
            let yaml = serde_yaml::to_string(&tiketi_operator::crd::crd()).context("serializing the CRD")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Simulate(args) => tiketi_operator::simulate::run(args),
        Command::Run(args) => run_operator(args).await,
    }
}

async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        namespace,
        secret_namespaces,
        metrics_addr,
        leader_election,
        lease_namespace,
        lease_name,
        identity,
        log_format,
        signal_timeout,
        status_interval,
        redis_ca_file,
    } = args;
    init_logging(log_format);
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (KUBECONFIG?)")?;
    let identity = identity.unwrap_or_else(default_identity);
    let leader = leader_election.then(|| {
        let ns = lease_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| namespace.clone())
            .unwrap_or_else(|| "default".into());
        LeaderConfig::new(ns, lease_name, identity.clone())
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tiketi_shared::telemetry::shutdown_signal().await;
        tracing::info!("shutting down");
        stop_tx.send_replace(true);
    });
    run(
        client,
        RunOptions {
            namespace,
            secret_namespaces,
            metrics_addr: Some(metrics_addr),
            leader,
            identity,
            autoscaler: tiketi_operator::autoscale::AutoscalerOptions {
                signal_timeout,
                status_interval,
                redis_ca_file,
                ..Default::default()
            },
        },
        stop_rx,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "tiketi-operator",
            "run",
            "--namespace",
            "tickets",
            "--leader-election",
            "false",
            "--log-format",
            "text",
        ]);
        match cli {
            Ok(Cli {
                command: Command::Run(a),
            }) => {
                assert_eq!(a.namespace.as_deref(), Some("tickets"));
                assert!(!a.leader_election);
                // One dual-stack socket by default: IPv6-only EKS clusters reach it too.
                assert_eq!(a.metrics_addr.to_string(), "[::]:9090");
            }
            other => panic!("unexpected parse: {other:?}"),
        }
    }
}
