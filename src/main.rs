//! The `hearth` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hearth::config::Config;

/// mimalloc instead of glibc malloc. Why: glibc kept freed memory in the
/// shards' and blocking threads' arenas (twelve registrations' argon2 work
/// areas left 235 MB resident; a 1,000-member fan-out of large `/sync`
/// responses left 3.7 GB, kept while idle), and malloc/free were 40% of a
/// fan-out profile. mimalloc purges freed pages back to the OS and is faster
/// on the small allocations JSON handling makes (the same twelve
/// registrations: 44 MB resident).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG_HELP: &str = "\
CONFIGURATION (TOML; every key can be overridden by an environment variable
HEARTH_SECTION__KEY, e.g. HEARTH_LOG__FORMAT=json, HEARTH_SERVER_NAME=example.org,
HEARTH_LISTENERS__0__PORT=8448; unknown keys and bad values stop hearth at start):

  server_name = \"example.org\"     # required: the domain in user ids
  shards = 2                      # default: the cores this process may use
  pin_cores = true                # pin shard i to the i-th allowed core
  io_driver = \"auto\"              # auto (io_uring, else epoll) | io_uring | epoll
  data_dir = \"./hearth-data\"      # signing key, embedded PostgreSQL, media

  [[listeners]]                   # repeatable; default 127.0.0.1:8008 client
  address = \"0.0.0.0\"
  port = 8008
  kind = \"client\"                 # client | federation (port 8448 by convention)
  tls_certificate = \"fed.crt\"     # PEM chain + key: this listener speaks TLS
  tls_private_key = \"fed.key\"     # (federation must, unless a proxy terminates it)

  [federation]
  deny_ip_ranges = [...]          # default: Synapse's ip_range_blacklist (private, loopback...)
  allow_ip_ranges = []            # exceptions, e.g. [\"127.0.0.0/8\"] for loopback tests
  verify_peer_tls = true          # check peers' certificates against the system CAs
  connect_timeout_ms = 10000      request_timeout_ms = 60000
  max_response_bytes = 52428800   max_idle_per_destination = 4
  dns_servers = []                # SRV nameservers (\"ip:port\"); default /etc/resolv.conf
  [[federation.trusted_key_servers]]   # notaries; none: keys straight from the origin
  server_name = \"notary.example\"
  verify_keys = { \"ed25519:abc\" = \"<base64 public key>\" }

  [well_known]                    # served on client listeners when set
  server = \"matrix.example.org:443\"   # /.well-known/matrix/server m.server
  client = \"https://matrix.example.org\"   # /.well-known/matrix/client base_url

  [http]
  max_header_bytes = 16384        max_body_bytes = 33554432
  header_timeout_ms = 10000       body_timeout_ms = 30000
  keepalive_timeout_ms = 60000    write_timeout_ms = 30000
  max_connections_per_shard = 10000   shutdown_grace_ms = 10000

  [database]
  url = \"postgres://user:pass@host:5432/hearth\"   # unset: embedded cluster in data_dir
  pool_size = 4                   # connections per shard
  max_queued = 4096               # queued queries per shard before 'busy'
  run_as = \"postgres\"             # user for the embedded cluster when run as root

  [registration]
  enabled = true                  # false: POST /register answers 403 M_FORBIDDEN
  token = \"s3cret\"                # optional: registering needs this token
                                  # (m.login.registration_token; 1-64 of A-Za-z0-9-._~)

  [media]
  max_upload_size = 52428800      # bytes (m.upload.size); more is 413 M_TOO_LARGE
  legacy_unauthenticated = false  # serve the deprecated /_matrix/media/v3/download
  max_pending_uploads = 5         # open POST /media/v1/create reservations per user
  unused_expiration_ms = 86400000 max_image_pixels = 32000000

  [rate_limits]                   # Synapse's rc_*; 429 M_LIMIT_EXCEEDED + retry_after_ms
  enabled = true                  # false: all off (each below also has enabled = false)
  message = { per_second = 0.2, burst_count = 10 }        # events per user
  registration = { per_second = 0.17, burst_count = 3 }   # accounts per IP
  login.address = { per_second = 0.003, burst_count = 5 } # also login.account;
  login.failed_attempts = { per_second = 0.17, burst_count = 3 }  # per account
  joins.local = { per_second = 0.1, burst_count = 10 }    # joins.remote 0.01/10
  joins_per_room = { per_second = 1, burst_count = 10 }
  federation = { window_size_ms = 1000, sleep_limit = 10, sleep_delay_ms = 500,
                 reject_limit = 50, concurrent = 3 }      # per origin server

  [admission]                     # per-shard caps on initial syncs, big /messages, /members,
  initial_syncs = 4               # /state, state resolutions; the rest queue fairly per user
  max_queued = 2000               # then 503 M_LIMIT_EXCEEDED (see README \"Admission\")

  [log]
  format = \"text\"                 # text | json
  level = \"info\"                  # tracing filter, e.g. \"hearth=debug,info\"
  access_log = true               # one line per request (target hearth::access)
";

#[derive(Parser)]
#[command(name = "hearth", version, about = "A thread-per-core Matrix homeserver", after_long_help = CONFIG_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve {
        /// Config file (TOML). Without one, defaults plus HEARTH_* variables.
        #[arg(long, short, env = "HEARTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create a user account directly in the database (works with
    /// registration disabled). Starts the embedded PostgreSQL if hearth is
    /// not running; with database.url it talks to that server.
    RegisterUser {
        #[arg(long, short, env = "HEARTH_CONFIG")]
        config: Option<PathBuf>,
        /// Localpart (`alice`) or full user id (`@alice:example.org`).
        #[arg(long)]
        user: String,
        /// The password (visible in the process list: prefer --password-file).
        #[arg(long, conflicts_with = "password_file")]
        password: Option<String>,
        /// Read the password from this file (first line).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Retire the signing key (kept as an old verify key) and make a new
    /// one with a fresh key id. Run while hearth is stopped.
    RotateSigningKey {
        #[arg(long, short, env = "HEARTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate the configuration, print the effective values.
    CheckConfig {
        #[arg(long, short, env = "HEARTH_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                print!("{}", c.to_toml());
                eprintln!("config OK ({} shards)", c.shard_count());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hearth: {e}");
                ExitCode::from(2)
            }
        },
        Command::RotateSigningKey { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("hearth: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = hearth::primitives::unix_ms();
            match hearth::events::old_keys::rotate(&cfg.data_dir, &cfg.server_name, now) {
                Ok(k) => {
                    println!("new signing key {}", k.key_id);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hearth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RegisterUser {
            config,
            user,
            password,
            password_file,
            admin,
        } => register_user(config, &user, password, password_file, admin),
        Command::Serve { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("hearth: {e}");
                    return ExitCode::from(2);
                }
            };
            hearth::observability::init(&cfg.log);
            match hearth::server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once, on stderr, where a failed start is looked for
                    // (the log on stdout would make it a second copy).
                    eprintln!("hearth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn register_user(
    config: Option<PathBuf>,
    user: &str,
    password: Option<String>,
    password_file: Option<PathBuf>,
    admin: bool,
) -> ExitCode {
    let cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hearth: {e}");
            return ExitCode::from(2);
        }
    };
    let password = match (password, password_file) {
        (Some(p), None) => p,
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(text) => text.lines().next().unwrap_or("").to_owned(),
            Err(e) => {
                eprintln!("hearth: cannot read {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("hearth: give --password or --password-file");
            return ExitCode::from(2);
        }
    };
    // Quiet unless asked: starting the embedded cluster logs at info.
    let mut log = cfg.log.clone();
    if std::env::var_os("HEARTH_LOG__LEVEL").is_none() {
        log.level = "warn".into();
    }
    hearth::observability::init(&log);
    match hearth::auth::cli::register_user(&cfg, user, &password, admin) {
        Ok(id) => {
            println!("created user {id}{}", if admin { " (admin)" } else { "" });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hearth: {e}");
            ExitCode::FAILURE
        }
    }
}
