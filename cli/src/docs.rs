//! `recsys docs configuration`: the reference of every flag and environment variable, generated
//! from the command's own clap definition. `docs/configuration.md` is this output; a test fails
//! when the two differ, so the page cannot drift from the code.

use std::fmt::Write;

use clap::{Arg, Command, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Print `docs/configuration.md`: every command's flags, environment variables and defaults.
    Configuration,
}

pub fn run(cmd: DocsCommand) {
    match cmd {
        DocsCommand::Configuration => print!("{}", configuration(crate::command())),
    }
}

/// The markdown page: the global flags once, then one table per command that has flags.
pub fn configuration(mut root: Command) -> String {
    root.build();
    let mut out = String::from(
        "# Configuration\n\n\
         Generated from the code by `cargo run -- docs configuration > docs/configuration.md`; a \
         test (`cli/src/docs.rs`) fails when this page and the code differ. Every flag also reads \
         the environment variable next to it, so a compose file can set any of them; a flag on \
         the command line wins over its variable.\n\n\
         Ballista's own scheduler and executor flags keep Ballista's names and defaults and read \
         `RECSYS_SCHEDULER_<FLAG>` / `RECSYS_EXECUTOR_<FLAG>`.\n\n\
         ## Global flags (every command)\n\n",
    );
    table(&mut out, root.get_arguments().filter(|a| documented(a)));
    let mut path = vec![root.get_name().to_string()];
    for sub in root.get_subcommands() {
        commands(&mut out, sub, &mut path);
    }
    out
}

fn commands(out: &mut String, cmd: &Command, path: &mut Vec<String>) {
    if cmd.get_name() == "help" {
        return;
    }
    path.push(cmd.get_name().to_string());
    let own: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| documented(a) && !a.is_global_set())
        .collect();
    if !own.is_empty() || cmd.get_subcommands().next().is_none() {
        let _ = writeln!(out, "## `{}`\n", path.join(" "));
        if let Some(about) = cmd.get_about() {
            let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
        }
        if own.is_empty() {
            out.push_str("No flags of its own.\n\n");
        } else {
            table(out, own.into_iter());
        }
    }
    for sub in cmd.get_subcommands() {
        commands(out, sub, path);
    }
    path.pop();
}

/// Flags and positionals a user sets; clap's own `--help` and `--version` are left out.
fn documented(arg: &Arg) -> bool {
    !matches!(arg.get_id().as_str(), "help" | "version")
}

fn table<'a>(out: &mut String, args: impl Iterator<Item = &'a Arg>) {
    out.push_str("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in args {
        let flag = match (arg.get_long(), arg.get_short()) {
            (Some(long), _) => {
                let aliases = arg
                    .get_visible_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| format!(" / `--{a}`"))
                    .collect::<String>();
                format!("`--{long}`{aliases}")
            }
            (None, Some(short)) => format!("`-{short}`"),
            (None, None) => format!("`<{}>` (positional)", arg.get_id()),
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let default = if default.is_empty() || arg.is_hide_default_value_set() {
            String::new()
        } else {
            format!("`{default}`")
        };
        let mut meaning = arg
            .get_help()
            .map(|h| one_line(&h.to_string()))
            .unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| match v.get_help() {
                Some(help) => format!("`{}` ({})", v.get_name(), one_line(&help.to_string())),
                None => format!("`{}`", v.get_name()),
            })
            .collect();
        // A boolean switch's possible values are only `true`/`false`: not worth listing.
        let switch = arg
            .get_possible_values()
            .iter()
            .all(|v| matches!(v.get_name(), "true" | "false"));
        if !values.is_empty() && arg.get_action().takes_values() && !switch {
            if !meaning.is_empty() && !meaning.ends_with('.') {
                meaning.push('.');
            }
            let _ = write!(meaning, " One of {}.", values.join(", "));
        }
        let _ = writeln!(out, "| {flag} | {env} | {default} | {meaning} |");
    }
    out.push('\n');
}

/// Help text on one table row: lines joined, pipes escaped.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")
    }

    #[test]
    fn configuration_page_matches_the_code() {
        let generated = configuration(crate::command());
        let committed = std::fs::read_to_string(page_path()).unwrap_or_default();
        assert!(
            generated == committed,
            "docs/configuration.md differs from the command's flags: run \
             `cargo run -- docs configuration > docs/configuration.md`"
        );
    }

    /// Table rows of flags whose column `column` (1 flag, 2 environment, 4 meaning) is empty.
    fn rows_without(column: usize) -> Vec<String> {
        configuration(crate::command())
            .lines()
            .filter(|l| l.starts_with("| `--"))
            .filter(|l| l.split('|').nth(column).is_none_or(|c| c.trim().is_empty()))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_flag_reads_an_environment_variable_and_says_what_it_does() {
        let no_env = rows_without(2);
        assert!(no_env.is_empty(), "flags without a variable: {no_env:#?}");
        let no_help = rows_without(4);
        assert!(no_help.is_empty(), "flags without a meaning: {no_help:#?}");
    }
}
