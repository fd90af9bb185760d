//! Where `raft-kv serve` takes its settings from besides the command line: environment
//! variables and a TOML file, with one definition per setting (the clap flag).
//!
//! - Every long flag `--some-flag` of `serve` also reads `RAFT_KV_SOME_FLAG` (clap's `env`).
//! - `--config FILE` (or `RAFT_KV_CONFIG`) names a TOML file whose keys are the long flag
//!   names: `data-dir = "/var/lib/raft-kv"`, `election-ticks = 10`, `join = ["a:1", "b:2"]`,
//!   `insecure-transport = true`.
//! - Precedence: command line, then environment, then file, then the flag's default.
//!
//! The file is applied by turning each key into `--key=value` arguments placed before the
//! real ones, so clap parses and checks file values exactly like flags. Keys given on the
//! command line or through their environment variable are left out (clap reads a variable
//! only for a flag absent from the arguments, and a list flag would otherwise merge both).
//! Flags added to `ServeArgs` later get all of this without any change here.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

/// The subcommand these settings are for.
const SUBCOMMAND: &str = "serve";
/// Prefix of the environment variables.
const ENV_PREFIX: &str = "RAFT_KV_";
/// Flags that name the file or act on it: neither can come from the file itself.
const NOT_IN_FILE: &[&str] = &["config", "print-config"];
/// RAFT_KV_* variables that are not `serve` flags but are read elsewhere: the CLI's token and
/// the test harness's log filter.
const OTHER_ENV: &[&str] = &[crate::client::TOKEN_ENV, "RAFT_KV_LOG"];
/// Flags without an environment variable: a forgotten `RAFT_KV_PRINT_CONFIG` would stop every
/// node from starting.
const NO_ENV: &[&str] = &["print-config"];

/// Flags that together name one address: the listen and advertised addresses default to
/// `*-addr`. A layer that sets any of them replaces the whole group from lower layers, so
/// `--raft-addr` on the command line is not overridden by `raft-advertise` in the file.
const ADDRESS_GROUPS: [[&str; 3]; 2] = [
    ["raft-addr", "raft-listen", "raft-advertise"],
    ["http-addr", "http-listen", "http-advertise"],
];

/// The flags that share `key`'s address group (`key` itself included), or just `key`.
fn group_of(key: &str) -> Vec<&str> {
    ADDRESS_GROUPS
        .iter()
        .find(|g| g.contains(&key))
        .map(|g| g.to_vec())
        .unwrap_or_else(|| vec![key])
}

/// The environment variable of the long flag `long`: `data-dir` -> `RAFT_KV_DATA_DIR`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// Gives each long flag of `cmd` its `RAFT_KV_*` environment variable (see [`env_name`]).
fn with_env(cmd: Command) -> Command {
    cmd.mut_args(|arg| match arg.get_long().map(str::to_owned) {
        Some(long) if !NO_ENV.contains(&long.as_str()) => arg.env(env_name(&long)),
        _ => arg,
    })
}

/// Where one effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A flag on the command line.
    CommandLine,
    /// Its `RAFT_KV_*` environment variable.
    Env(String),
    /// The config file.
    File(PathBuf),
    /// The flag's default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::CommandLine => write!(f, "command line"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Default => write!(f, "default"),
        }
    }
}

/// One setting of `serve` as parsed: its flag name, raw values and source (`None`: unset).
#[derive(Debug, Clone)]
pub struct Setting {
    /// The long flag name, which is also the config file key.
    pub key: String,
    /// The raw values as given (several for a list flag).
    pub values: Vec<String>,
    /// Where they came from; `None` when the flag is unset and has no default.
    pub source: Option<Source>,
    /// Whether the flag is a list (`join = [...]`).
    list: bool,
    /// Whether its values are booleans.
    boolean: bool,
}

/// The effective settings of `serve`, recorded while parsing: clap's derive drops where each
/// value came from, and `--print-config` and error messages need it.
static SETTINGS: OnceLock<Vec<Setting>> = OnceLock::new();

/// Why the command line could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (including `--help` and `--version`), printed by clap; with the
    /// config file and the keys taken from it, when one was applied.
    Clap(clap::Error, Option<String>),
    /// A problem with the config file, naming the file and the key.
    Config(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Clap(e, None) => write!(f, "{e}"),
            ParseError::Clap(e, Some(note)) => write!(f, "{e}{note}"),
            ParseError::Config(m) => write!(f, "{m}"),
        }
    }
}

/// Parses the process's arguments into `P`; `serve` also reads the environment and its
/// config file. On error prints it and exits (status 2, as clap does; 0 for `--help`).
pub fn parse<P: CommandFactory + FromArgMatches>() -> P {
    match try_parse_from::<P>(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseError::Clap(e, note)) => {
            if let Some(note) = note {
                // clap's message may be about a flag the operator only wrote in the file.
                let _ = e.print();
                eprintln!("{note}");
                std::process::exit(e.exit_code())
            }
            e.exit()
        }
        Err(ParseError::Config(message)) => {
            eprintln!("error: {message}");
            std::process::exit(2)
        }
    }
}

/// [`parse`] on explicit arguments (the first is the binary's name), without exiting.
pub fn try_parse_from<P: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<P, ParseError> {
    let is_serve = args.get(1).is_some_and(|a| a == SUBCOMMAND);
    let given = if is_serve {
        command_line_flags(&args[2..])
    } else {
        BTreeSet::new()
    };
    // An address group set on the command line ignores the group's environment variables.
    let cmd = P::command().mut_subcommand(SUBCOMMAND, |c| {
        with_env(c).mut_args(|arg| {
            let long = arg.get_long().unwrap_or_default().to_owned();
            let shadowed = group_of(&long)
                .iter()
                .any(|k| *k != long && given.contains(*k));
            if shadowed {
                arg.env(None::<&str>)
            } else {
                arg
            }
        })
    });
    let Some(serve_cmd) = cmd.find_subcommand(SUBCOMMAND).filter(|_| is_serve) else {
        let matches = cmd
            .try_get_matches_from(args)
            .map_err(|e| ParseError::Clap(e, None))?;
        return P::from_arg_matches(&matches).map_err(|e| ParseError::Clap(e, None));
    };
    let real = &args[2..];
    let file = config_path(real);
    let (injected, file_keys) = match &file {
        Some(path) => file_arguments(serve_cmd, path, &given)?,
        None => (Vec::new(), BTreeSet::new()),
    };
    let mut all = args[..2].to_vec();
    all.extend(injected);
    all.extend(real.iter().cloned());
    let matches = match cmd.clone().try_get_matches_from(all) {
        Ok(m) => m,
        Err(e) => return Err(blame_file(e, file.as_deref(), &file_keys)),
    };
    if let Some((SUBCOMMAND, sub)) = matches.subcommand() {
        let settings = record(serve_cmd, sub, file.as_deref(), &file_keys);
        // Parsing happens once per process; a second parse (tests) keeps the first record.
        let _ = SETTINGS.set(settings);
    }
    P::from_arg_matches(&matches).map_err(|e| ParseError::Clap(e, None))
}

/// Long flag names on the command line (`--name` or `--name=value`), up to a `--`. All
/// `serve` flags are long, so no short-option bundling to untangle.
fn command_line_flags(args: &[OsString]) -> BTreeSet<String> {
    let mut given = BTreeSet::new();
    for arg in args {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if let Some(flag) = text.strip_prefix("--") {
            let name = flag.split_once('=').map_or(flag, |(name, _)| name);
            given.insert(name.to_string());
        }
    }
    given
}

/// The config file: `--config FILE`, `--config=FILE`, else `RAFT_KV_CONFIG` (empty: none).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            found = iter.next().map(PathBuf::from);
        } else if let Some(path) = arg.to_str().and_then(|t| t.strip_prefix("--config=")) {
            found = Some(PathBuf::from(path));
        }
    }
    found.or_else(|| {
        std::env::var_os(env_name("config"))
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Reads the config file and turns its keys into `--key=value` arguments, leaving out keys
/// given on the command line or through their environment variable. Returns the arguments
/// and the keys they came from.
fn file_arguments(
    cmd: &Command,
    path: &Path,
    given: &BTreeSet<String>,
) -> Result<(Vec<OsString>, BTreeSet<String>), ParseError> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ParseError::Config(format!("config file {file}: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ParseError::Config(format!("config file {file}: {e}")))?;
    let mut injected = Vec::new();
    let mut keys = BTreeSet::new();
    for (key, value) in &table {
        let fail =
            |why: String| ParseError::Config(format!("config file {file}: key {key}: {why}"));
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            return Err(ParseError::Config(format!(
                "config file {file}: unknown key {key:?} (keys are the long flag names of \
                 `raft-kv serve`, see `raft-kv serve --help`)"
            )));
        };
        if NOT_IN_FILE.contains(&key.as_str()) {
            return Err(fail("cannot be set in a config file".into()));
        }
        let values = file_values(arg, value).map_err(fail)?;
        let higher_layer_sets_it = group_of(key)
            .iter()
            .any(|k| given.contains(*k) || std::env::var_os(env_name(k)).is_some());
        if higher_layer_sets_it {
            continue;
        }
        for v in values {
            injected.push(match v {
                Some(v) => OsString::from(format!("--{key}={v}")),
                None => OsString::from(format!("--{key}")),
            });
        }
        keys.insert(key.clone());
    }
    Ok((injected, keys))
}

/// A file value as the values of `--key=value` arguments (`None`: the bare flag).
fn file_values(arg: &Arg, value: &toml::Value) -> Result<Vec<Option<String>>, String> {
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            toml::Value::Boolean(true) => Ok(vec![None]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!("expected true or false, not {other}")),
        },
        ArgAction::Append => match value {
            toml::Value::Array(items) => items.iter().map(|v| scalar(v).map(Some)).collect(),
            other => Ok(vec![Some(scalar(other)?)]),
        },
        _ => Ok(vec![Some(scalar(value)?)]),
    }
}

/// A scalar TOML value as the text a flag takes.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) => Err("expected one value, not a list".into()),
        toml::Value::Table(_) => Err("expected a value, not a table".into()),
    }
}

/// Turns clap's complaint about a value that came from the file into one naming the file and
/// the key (clap would name only the flag, which the operator never typed).
fn blame_file(e: clap::Error, file: Option<&Path>, file_keys: &BTreeSet<String>) -> ParseError {
    let value_error = matches!(
        e.kind(),
        ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
            | ErrorKind::TooManyValues
            | ErrorKind::TooFewValues
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::NoEquals
    );
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    // clap names the flag as `--key <VALUE>` or `--key=<VALUE>`.
    let key = arg.as_deref().and_then(|a| {
        let name = a.strip_prefix("--")?;
        let end = name.find([' ', '=', '<']).unwrap_or(name.len());
        Some(name[..end].to_string())
    });
    match (file, key) {
        (Some(file), Some(key)) if value_error && file_keys.contains(&key) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let message = first.strip_prefix("error: ").unwrap_or(first);
            ParseError::Config(format!(
                "config file {}: key {key}: {message}",
                file.display()
            ))
        }
        (Some(file), _) if !file_keys.is_empty() && e.use_stderr() => {
            let keys: Vec<&str> = file_keys.iter().map(String::as_str).collect();
            let note = format!(
                "note: config file {} set {}",
                file.display(),
                keys.join(", ")
            );
            ParseError::Clap(e, Some(note))
        }
        _ => ParseError::Clap(e, None),
    }
}

/// What each `serve` flag ended up as, and from where.
fn record(
    cmd: &Command,
    matches: &ArgMatches,
    file: Option<&Path>,
    file_keys: &BTreeSet<String>,
) -> Vec<Setting> {
    let mut settings = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => match file {
                Some(file) if file_keys.contains(key) => Some(Source::File(file.to_path_buf())),
                _ => Some(Source::CommandLine),
            },
            Some(ValueSource::EnvVariable) => Some(Source::Env(env_name(key))),
            Some(ValueSource::DefaultValue) => Some(Source::Default),
            _ => None,
        };
        let boolean = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
            || arg.get_value_parser().type_id() == std::any::TypeId::of::<bool>();
        settings.push(Setting {
            key: key.to_string(),
            values,
            source: source.filter(|_| matches.contains_id(id)),
            list: matches!(arg.get_action(), ArgAction::Append),
            boolean,
        });
    }
    settings
}

/// RAFT_KV_* environment variables that match no `serve` flag (typos like
/// `RAFT_KV_DATADIR`), which would otherwise be ignored without a word.
pub fn unknown_env_vars() -> Vec<String> {
    let known: BTreeSet<String> = settings().iter().map(|s| env_name(&s.key)).collect();
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with(ENV_PREFIX))
        .filter(|name| !known.contains(name) && !OTHER_ENV.contains(&name.as_str()))
        .collect()
}

/// The settings `serve` runs with, recorded by [`parse`] (empty before it ran).
pub fn settings() -> &'static [Setting] {
    SETTINGS.get().map(Vec::as_slice).unwrap_or_default()
}

/// `key = value` in TOML: booleans and whole numbers bare, everything else a string.
fn toml_value(setting: &Setting) -> String {
    let one = |v: &String| -> toml::Value {
        if setting.boolean {
            if let Ok(b) = v.parse::<bool>() {
                return toml::Value::Boolean(b);
            }
        }
        let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        match v.parse::<i64>() {
            Ok(i) if digits && !(v.len() > 1 && v.starts_with('0')) => toml::Value::Integer(i),
            _ => toml::Value::String(v.clone()),
        }
    };
    let value = if setting.list {
        toml::Value::Array(setting.values.iter().map(one).collect())
    } else {
        setting
            .values
            .first()
            .map_or(toml::Value::String(String::new()), one)
    };
    value.to_string()
}

/// The effective settings as a TOML document that `--config` accepts: one `key = value` line
/// per setting, with where it came from as a comment; unset flags are commented out.
pub fn effective_toml() -> String {
    let mut out = String::from(
        "# raft-kv serve: effective settings (command line > env RAFT_KV_* > config file > default)\n",
    );
    for setting in settings() {
        if NOT_IN_FILE.contains(&setting.key.as_str()) {
            if let Some(source) = &setting.source {
                if setting.key == "config" {
                    out.push_str(&format!(
                        "# config file: {} ({source})\n",
                        setting.values.join(", ")
                    ));
                }
            }
            continue;
        }
        match &setting.source {
            Some(source) => out.push_str(&format!(
                "{} = {}  # {source}\n",
                setting.key,
                toml_value(setting)
            )),
            None => out.push_str(&format!("# {} = (not set)\n", setting.key)),
        }
    }
    out
}

/// `key = value (from SOURCE)` for each flag named `--key` in `message`, so an error about a
/// combination of values says where each one was set.
pub fn explain(message: &str) -> String {
    let named: Vec<String> = settings()
        .iter()
        .filter(|s| {
            let flag = format!("--{}", s.key);
            message.match_indices(&flag).any(|(i, _)| {
                // A whole flag name, not the start of a longer one.
                let rest = &message[i + flag.len()..];
                !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            })
        })
        .filter_map(|s| {
            let value = format!("{} = {}", s.key, toml_value(s));
            match s.source.as_ref()? {
                Source::Default => Some(format!("{value} by default")),
                source => Some(format!("{value} from {source}")),
            }
        })
        .collect();
    if named.is_empty() {
        message.to_string()
    } else {
        format!("{message} ({})", named.join("; "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn env_names_follow_the_flags() {
        assert_eq!(env_name("data-dir"), "RAFT_KV_DATA_DIR");
        assert_eq!(env_name("election-ticks"), "RAFT_KV_ELECTION_TICKS");
    }

    #[test]
    fn command_line_flags_stop_at_double_dash() {
        let args: Vec<OsString> = ["--id", "1", "--data-dir=/x", "--", "--join"]
            .iter()
            .map(OsString::from)
            .collect();
        let given = command_line_flags(&args);
        assert!(given.contains("id") && given.contains("data-dir"));
        assert!(!given.contains("join"));
    }

    #[test]
    fn config_path_from_either_form() {
        let args = |v: &[&str]| -> Vec<OsString> { v.iter().map(OsString::from).collect() };
        assert_eq!(
            config_path(&args(&["--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path(&args(&["--id=1", "--config=b.toml"])),
            Some(PathBuf::from("b.toml"))
        );
    }

    #[test]
    fn values_by_kind_of_flag() {
        let flag = Arg::new("f").long("f").action(ArgAction::SetTrue);
        assert_eq!(
            file_values(&flag, &toml::Value::Boolean(true)).unwrap(),
            vec![None]
        );
        assert!(file_values(&flag, &toml::Value::Boolean(false))
            .unwrap()
            .is_empty());
        assert!(file_values(&flag, &toml::Value::String("yes".into())).is_err());
        let list = Arg::new("l").long("l").action(ArgAction::Append);
        let items = toml::Value::Array(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(
            file_values(&list, &items).unwrap(),
            vec![Some("a:1".to_string()), Some("b:2".to_string())]
        );
        let one = Arg::new("o").long("o").action(ArgAction::Set);
        assert_eq!(
            file_values(&one, &toml::Value::Integer(7)).unwrap(),
            vec![Some("7".to_string())]
        );
        assert!(file_values(&one, &items).is_err());
    }
}
