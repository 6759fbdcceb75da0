//! The command line: clap definitions of every command and its options,
//! and how a usage error is reported.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::model::error::exit;

/// The environment variable naming the registry root.
const ROOT_ENV: &str = "MSB_REGISTRY_ROOT";

/// A registry for microsandbox VM disk snapshots.
#[derive(Debug, Parser)]
#[command(
    name = "msb-registry",
    version = env!("MSB_REGISTRY_VERSION"),
    about,
    propagate_version = true,
    after_help = "Environment: MSB_REGISTRY_ROOT names the registry root when --root is not given \
                  (empty means unset); else $XDG_DATA_HOME/msb-registry, else \
                  ~/.local/share/msb-registry."
)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Whether `--root` came from `MSB_REGISTRY_ROOT` rather than the command line.
    #[arg(skip)]
    pub root_from_env: bool,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the process arguments. Help, version and usage errors come
    /// back as clap's error, for [`report_usage`].
    pub fn parse_args() -> Result<Self, clap::Error> {
        let mut command = Self::command();
        // An empty `MSB_REGISTRY_ROOT=` means unset, as for XDG_DATA_HOME.
        if std::env::var_os(ROOT_ENV).is_some_and(|v| v.is_empty()) {
            command = command.mut_arg("root", |a| a.env(clap::builder::Resettable::Reset));
        }
        let matches = command.try_get_matches()?;
        let mut cli = Self::from_arg_matches(&matches)?;
        cli.root_from_env = matches.value_source("root") == Some(ValueSource::EnvVariable);
        Ok(cli)
    }
}

/// Print what stopped argument parsing and return the exit code. Help and
/// version go out as clap prints them; a usage error becomes one line on
/// stderr (clap's first paragraph, which names the argument) and exit 2,
/// like every other error.
pub fn report_usage(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Nothing useful is left to do when stdout or stderr is closed.
        let _ = e.print();
        return e.exit_code();
    }
    eprintln!("{}; see --help", usage_line(&e.render().to_string()));
    exit::USAGE
}

/// The first paragraph of a rendered clap error, on one line.
fn usage_line(rendered: &str) -> String {
    rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Registry root (`demo`: its work directory) [default: see `msb-registry --help`]
    #[arg(
        long,
        global = true,
        env = "MSB_REGISTRY_ROOT",
        hide_env = true,
        value_name = "DIR"
    )]
    pub root: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars and no summary lines; errors and data (list, show, sql…) still print.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Threads for hashing (import, add, verify --content) [default: the cores this process may use]
    #[arg(
        long,
        global = true,
        env = "MSB_REGISTRY_THREADS",
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub threads: Option<u16>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register an existing snapshot directory (copied in, verified, hashed).
    Add(AddArgs),
    /// Sign a snapshot with an SSH key (SSHSIG over its digest, namespace
    /// msb-registry-snapshot) and record the signature in the index.
    Sign {
        /// Name, full digest, or unique digest prefix.
        reference: String,
        /// An unencrypted OpenSSH private key (ed25519 or ECDSA P-256).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Who signs, as the trust file's allowed_signers lists them (recorded, shown by show).
        #[arg(long, value_name = "NAME")]
        principal: Option<String>,
    },
    /// List every snapshot, newest first.
    List,
    /// Show one snapshot: files, labels, image, children.
    Show {
        /// Name, full digest, or unique digest prefix (8+ hex digits).
        reference: String,
    },
    /// Ancestors root to head, or the descendant tree.
    Lineage {
        /// Name, full digest, or unique digest prefix.
        reference: String,
        /// Show the snapshots descending from REF instead.
        #[arg(long)]
        descendants: bool,
    },
    /// Run a read-only SQL query on the index.
    Sql {
        /// The query (one statement).
        query: String,
    },
    /// Remove snapshots: every reference is checked before any is removed.
    Rm {
        /// Names, full digests, or unique digest prefixes.
        #[arg(required = true, num_args = 1.., value_name = "REF")]
        references: Vec<String>,
        /// Remove even when other snapshots name them as parent.
        #[arg(long)]
        force: bool,
    },
    /// Give a snapshot a new name (its directory moves with it); exit 4 if the name is taken.
    Rename {
        /// Name, full digest, or unique digest prefix.
        reference: String,
        /// The new name.
        new_name: String,
    },
    /// Rebuild the index from the artifacts on disk.
    Reindex,
    /// What each snapshot costs: data, bytes unique to it, bytes new beyond its parent.
    Du {
        /// Snapshots to show (name, digest or prefix) [default: all].
        references: Vec<String>,
    },
    /// Remove unreferenced cache artifacts, debris and dead imports.
    Gc {
        /// Print what would be removed and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// DANGEROUS, shared microsandbox homes only: when db/msb.db cannot be
        /// read (or has an unknown schema), sweep the cache anyway as if
        /// microsandbox used no image; its sandboxes may lose their layers.
        #[arg(long)]
        unsafe_ignore_unreadable_msb_db: bool,
        /// Leave debris changed less than this many seconds ago (0: remove all debris).
        #[arg(long, value_name = "SECONDS", default_value_t = crate::ops::gc::DEFAULT_GRACE_SECS)]
        grace: u64,
    },
    /// Damaged snapshot copies a repair (import, add, pull) moved aside into quarantine/.
    Quarantine {
        /// What to do.
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Check the index against the disk; exit 5 when anything is wrong.
    Verify {
        /// Check only this snapshot (name, digest or prefix) and its image.
        reference: Option<String>,
        /// Also re-hash every file against its recorded digest.
        #[arg(long, conflicts_with = "signatures")]
        content: bool,
        /// Check the stored signatures instead (and the chain below each signed snapshot).
        #[arg(long)]
        signatures: bool,
        /// With --signatures: every signature must be by a key this allowed_signers file allows.
        #[arg(long, value_name = "FILE", requires = "signatures")]
        trust: Option<PathBuf>,
    },
    /// Write a snapshot (and optionally its chain and image) as an archive.
    Export(ExportArgs),
    /// Build a sample chain, export it, import it into a second registry, show its lineage, verify.
    ///
    /// Works in the work directory `--root DIR` when given on the command line
    /// (it must not be a registry), else in a new directory under the system
    /// temporary directory, which is kept for inspection. It never touches the
    /// default registry.
    Demo,
    /// Import an archive (zstd or plain tar) written by export or microsandbox's save.
    Import(ImportArgs),
    /// Push a snapshot (with --with-parents its chain) to an OCI registry, sending only the
    /// chunks the repository lacks.
    Push(PushArgs),
    /// Pull a snapshot and the ancestors this registry lacks from an OCI registry, downloading
    /// only the chunks no local snapshot holds.
    Pull(PullArgs),
    /// Print a shell completion script on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
}

/// `quarantine list` and `quarantine rm`.
#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// List the entries of quarantine/ (verify lists them too).
    List,
    /// Remove quarantine entries (gc removes them once older than its grace period).
    Rm {
        /// Entries as `quarantine list` shows them (quarantine/NAME-SECONDS).
        #[arg(value_name = "ENTRY", required_unless_present = "all")]
        entries: Vec<String>,
        /// Remove every entry.
        #[arg(long, conflicts_with = "entries")]
        all: bool,
    },
}

/// `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Name, full digest, or unique digest prefix.
    pub reference: String,
    /// HOST[:PORT]/REPOSITORY[:TAG]; the tag defaults to the snapshot's name.
    pub target: String,
    /// Push its ancestors too (those the repository lacks cost only their new chunks).
    #[arg(long)]
    pub with_parents: bool,
    /// Push the pinned image's cache artifacts too (tagged image-sha256-<hex>).
    #[arg(long)]
    pub with_image: bool,
    /// Blob transfers in flight.
    #[arg(long, value_name = "N", default_value_t = crate::ops::push::DEFAULT_JOBS as u16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// How to reach the registry.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// HOST[:PORT]/REPOSITORY:TAG or HOST[:PORT]/REPOSITORY@sha256:HEX; the tag
    /// sha256-<hex> names a snapshot by its digest.
    pub source: String,
    /// Name for the head snapshot [default: the name it was pushed under].
    #[arg(long)]
    pub name: Option<String>,
    /// Blob transfers in flight.
    #[arg(long, value_name = "N", default_value_t = crate::ops::push::DEFAULT_JOBS as u16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Largest file a pulled chunk map may describe, in bytes [default: 1 TiB].
    #[arg(long, value_name = "BYTES")]
    pub max_file_size: Option<u64>,
    /// Re-hash the copies here of the chain's snapshots before calling them intact: a
    /// damaged copy (even one of the right size) is pulled again and moves to quarantine/.
    #[arg(long)]
    pub repair: bool,
    /// Signing policy (signatures are found under the tag sha256-<hex>.sig).
    #[command(flatten)]
    pub trust: TrustArgs,
    /// How to reach the registry.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The snapshot directories (each holding manifest.json and the upper file); several
    /// are installed all or nothing, in any order: parents are found by their digests.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Name in the registry [default: the directory's name].
    #[arg(long)]
    pub name: Option<String>,
    /// A microsandbox cache directory to take the pinned image's artifacts from.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// An armored SSH signature of the snapshot (ssh-keygen -Y sign -n
    /// msb-registry-snapshot over its digest), recorded with it; repeatable.
    #[arg(long, value_name = "FILE")]
    pub signature: Vec<PathBuf>,
    /// Re-hash the snapshot's copy here, when present, before calling it intact: a
    /// damaged copy (even one of the right size) moves to quarantine/ and this one replaces it.
    #[arg(long)]
    pub repair: bool,
    /// With several directories: accept a snapshot whose parent is neither among them nor
    /// in this registry (it arrives shallow, as a single directory always may).
    #[arg(long)]
    pub allow_shallow: bool,
    /// Signing policy.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive file, or - for standard input.
    pub archive: String,
    /// Name for the head snapshot [default: its archive directory, sha256-<16 hex>];
    /// a head already present under another name is renamed to it.
    #[arg(long)]
    pub name: Option<String>,
    /// Largest logical size of one file in bytes; a header claiming more is refused before
    /// any data is read [default: 1099511627776, 1 TiB].
    #[arg(long, value_name = "BYTES")]
    pub max_file_size: Option<u64>,
    /// Hole bytes the integrity checks of one import may hash, besides 4,096 per byte of
    /// archive read; a sparse upper claiming more is refused at its header
    /// [default: 68719476736, 64 GiB].
    #[arg(long, value_name = "BYTES")]
    pub max_hole_bytes: Option<u64>,
    /// Accept an archive whose base (the parent of its first snapshot) is not
    /// in this registry: the snapshots arrive shallow.
    #[arg(long)]
    pub allow_shallow: bool,
    /// Re-hash each snapshot already present before calling it intact: a damaged
    /// copy (even one of the right size) moves to quarantine/ and this one replaces it.
    #[arg(long)]
    pub repair: bool,
    /// Signing policy.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// The signing policy of a write (import, add, pull).
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Refuse (exit 10) unless every snapshot brought is signed by a key the trust
    /// file allows, or is an ancestor of one that is; nothing is installed otherwise.
    #[arg(long)]
    pub require_signed: bool,
    /// The allowed_signers file for --require-signed [default: ROOT/trust/allowed_signers].
    #[arg(long, value_name = "FILE", requires = "require_signed")]
    pub trust: Option<PathBuf>,
}

impl TrustArgs {
    /// The library's options.
    pub fn options(self) -> crate::ops::sign::TrustOptions {
        crate::ops::sign::TrustOptions {
            require_signed: self.require_signed,
            trust: self.trust,
        }
    }
}

/// Credentials and transport for push and pull.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// User name for the registry [default: from the docker config, else anonymous].
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the password (or token) for --username from standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// A PEM file of CA certificates to trust besides the system's (a private registry's CA).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// INSECURE: talk plain HTTP, unencrypted and unauthenticated (a registry on localhost).
    #[arg(long, conflicts_with = "ca_cert")]
    pub insecure: bool,
    /// Give up the command's network work after this many seconds [default: no limit].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Cut an attempt that moves less than --min-rate × SECS bytes in any SECS seconds
    /// (waiting for an answer moves none).
    #[arg(long, value_name = "SECS", default_value_t = crate::remote::deadline::DEFAULT_STALL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,
    /// The slowest transfer accepted, in bytes per second, judged over --stall-timeout.
    #[arg(long, value_name = "BYTES", default_value_t = crate::remote::deadline::DEFAULT_MIN_RATE)]
    pub min_rate: u64,
    /// Attempts after the first for a transient failure (408, 425, 429, 5xx, a cut connection).
    #[arg(long, value_name = "N", default_value_t = crate::remote::retry::DEFAULT_RETRIES,
          value_parser = clap::value_parser!(u32).range(0..=20))]
    pub retries: u32,
}

impl Command {
    /// Commands that only read: they open the registry read-only, take no
    /// lock and create nothing.
    pub fn only_reads(&self) -> bool {
        matches!(
            self,
            Command::List
                | Command::Show { .. }
                | Command::Lineage { .. }
                | Command::Sql { .. }
                | Command::Verify { .. }
                | Command::Du { .. }
                | Command::Export(..)
                | Command::Quarantine {
                    action: QuarantineAction::List
                }
        )
    }
}

/// Options of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Name, full digest, or unique digest prefix of the head snapshot.
    pub reference: String,
    /// The archive file, or `-` for stdout.
    #[arg(short, long, value_name = "FILE|-")]
    pub output: PathBuf,
    /// Include every ancestor, root first.
    #[arg(long)]
    pub with_parents: bool,
    /// Include the head's image artifacts from the cache.
    #[arg(long)]
    pub with_image: bool,
    /// Write a plain tar instead of zstd.
    #[arg(long, conflicts_with = "level")]
    pub plain_tar: bool,
    /// Regular entries only, holes written as zeros (for older microsandbox loaders).
    #[arg(long)]
    pub dense: bool,
    /// zstd compression level, 1 (fastest) to 19 (smallest).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(i32).range(1..=19),
        default_value_t = crate::ops::export::DEFAULT_LEVEL
    )]
    pub level: i32,
    /// Export only the snapshots after REF in the chain, for a receiver that
    /// holds REF (its import refuses the archive otherwise).
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
}
