//! `trellis-fuzz`: built with `--features afl` under `cargo afl build`, the AFL++ harness of one
//! target (`trellis-fuzz <target>`, input from AFL++). Built normally, it replays files through
//! a target and reports what panics (`trellis-fuzz <target> FILE|DIR...`), lists the targets
//! (`trellis-fuzz list`), or rewrites the generated seeds (`trellis-fuzz seed`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use trellis_fuzz::Target;

const USAGE: &str = "\
usage: trellis-fuzz <target>                 the AFL++ harness (built with --features afl)
       trellis-fuzz <target> FILE|DIR...     run inputs through a target once, report panics
       trellis-fuzz list                     the targets, one a line
       trellis-fuzz seed                     rewrite the generated seeds (CSRs, chains, fixtures)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for target in Target::ALL {
                println!("{}", target.name());
            }
            ExitCode::SUCCESS
        }
        Some("seed") => match trellis_fuzz::seeds::write_all() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis-fuzz seed: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(name) => {
            let Some(target) = Target::from_name(name) else {
                eprintln!(
                    "trellis-fuzz: unknown target {name:?}; `trellis-fuzz list` names them\n{USAGE}"
                );
                return ExitCode::from(2);
            };
            let harness = match target.harness() {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("trellis-fuzz {name}: set-up failed: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            run(harness, &args[1..])
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "afl")]
fn run(harness: trellis_fuzz::Harness, files: &[String]) -> ExitCode {
    if !files.is_empty() {
        return replay(&harness, files);
    }
    afl::fuzz(true, move |data| harness(data));
    ExitCode::SUCCESS
}

#[cfg(not(feature = "afl"))]
fn run(harness: trellis_fuzz::Harness, files: &[String]) -> ExitCode {
    if files.is_empty() {
        eprintln!(
            "trellis-fuzz: this build replays files; give FILE|DIR (the AFL++ harness is built by scripts/fuzz)\n{USAGE}"
        );
        return ExitCode::from(2);
    }
    replay(&harness, files)
}

/// Runs every file (directories: every file in them) through `harness`; a panic is reported
/// with the file and fails the run.
fn replay(harness: &trellis_fuzz::Harness, args: &[String]) -> ExitCode {
    let mut files = Vec::new();
    for arg in args {
        if let Err(e) = collect(Path::new(arg), &mut files) {
            eprintln!("trellis-fuzz: {arg}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut failed = 0;
    for file in &files {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("trellis-fuzz: {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        };
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            eprintln!("PANIC on {}", file.display());
            failed += 1;
        }
    }
    println!("{} inputs, {failed} panicked", files.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        out.extend(entries.into_iter().filter(|p| p.is_file()));
    } else {
        out.push(path.to_owned());
    }
    Ok(())
}
