//! `flowplane profile`: what this machine is, which hardware profile fits it, what rate it should
//! hold, what caps it and what to change. Also the profile selection behind `run --profile`.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use flowplane_hwprofiles::profile::{self, Profile};
use flowplane_hwprofiles::{Machine, Verdict, verdict};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub(crate) struct ProfileArgs {
    /// Read /sys and /proc under this directory instead of / (for a copy of another machine's
    /// files, or a test tree).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,

    /// Print one JSON object (machine, verdict or what is missing) instead of text.
    #[arg(long)]
    json: bool,

    /// `auto` (the largest tier that fits) or a profile to check against this machine:
    /// tier-8, tier-16, tier-32, ha-3x16.
    #[arg(long, short, value_name = "NAME|auto", default_value = "auto")]
    profile: String,

    /// Print a built-in profile's file (its settings, with comments) and exit.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["json", "root"])]
    show: Option<String>,
}

/// Prints the inspection and the verdict. Exits 1 when a named profile does not fit.
pub(crate) fn profile(args: &ProfileArgs) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    if let Some(name) = &args.show {
        let text = profile::builtin_text(name).ok_or_else(|| {
            anyhow::anyhow!(
                "no built-in profile named `{name}` to show (known: {})",
                profile::builtin_names().join(", ")
            )
        })?;
        out.write_all(text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }

    // A mistyped --root would otherwise give a report of unknowns that looks like a verdict.
    if !args.root.join("proc").is_dir() && !args.root.join("sys").is_dir() {
        anyhow::bail!(
            "{} holds neither proc/ nor sys/: give the root of a machine's files (default /)",
            args.root.display()
        );
    }
    let machine = Machine::inspect(&args.root);
    let all = profile::builtin()?;
    let chosen = named(&args.profile)?;
    let result = verdict::assess(&machine, &all, chosen.as_ref());

    if args.json {
        let value = match &result {
            Ok(v) => json!({ "machine": machine, "verdict": v }),
            Err(m) => json!({
                "machine": machine,
                "misfit": { "profile": m.profile, "missing": m.missing },
            }),
        };
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        write!(out, "{machine}")?;
        if let Ok(v) = &result {
            write!(out, "{v}")?;
        }
    }
    out.flush()?;
    drop(out);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// For `run --profile`: the profile to apply on this machine and its verdict.
///
/// # Errors
///
/// An unknown name, a named profile that does not fit (saying what is missing), or `auto` on a
/// machine no tier fits.
pub(crate) fn select_for_run(name: &str) -> anyhow::Result<(Profile, Verdict)> {
    let machine = Machine::inspect(Path::new("/"));
    let all = profile::builtin()?;
    let chosen = named(name)?;
    let verdict = verdict::assess(&machine, &all, chosen.as_ref())?;
    let Some(p) = verdict.profile.clone() else {
        // `auto` found no tier: say what the smallest one needs.
        let missing = all
            .iter()
            .filter(|p| p.role == profile::Role::Single)
            .min_by_key(|p| p.sizing.cores)
            .and_then(|p| verdict::check_fit(&machine, p).err())
            .map_or_else(String::new, |m| format!(": {m}"));
        anyhow::bail!(
            "--profile auto: no hardware profile fits this machine{missing}. Run without --profile \
             to use the engine's defaults (`flowplane profile` shows what this machine holds)"
        );
    };
    Ok((p, verdict))
}

/// `None` for `auto`, else the built-in profile of that name.
fn named(name: &str) -> anyhow::Result<Option<Profile>> {
    if name == "auto" {
        return Ok(None);
    }
    Ok(Some(
        profile::by_name(name).context("cannot select the hardware profile")?,
    ))
}
