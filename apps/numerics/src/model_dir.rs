//! Where weights may be loaded from: regular files inside the model folder
//! (`NUMERICS_MODEL_DIR`), read through a size cap. `ReloadModel` names a
//! path, so without these checks any caller could have the service read
//! any file it can read (`/etc/shadow`), block on a FIFO, or exhaust memory
//! on `/dev/zero`.
//!
//! The checks are made on the opened descriptor, not on the path, so a
//! path that changes between check and open (a swapped symlink) cannot
//! slip through: the last component is opened without following symlinks
//! and without blocking, the descriptor must be a regular file, and the
//! file it really is (`/proc/self/fd/N`) must lie inside the folder.

use std::{
    fs::File,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Component, Path, PathBuf},
};

/// The folder used when `NUMERICS_MODEL_DIR` is unset, relative to the
/// working directory like the quick start's `data/` files.
pub const DEFAULT_MODEL_DIR: &str = "data/models";

/// Largest weights file read (the shipped model is under 1 KiB; a model a
/// hundred thousand times larger still fits).
pub const MAX_WEIGHTS_BYTES: u64 = 64 * 1024 * 1024;

/// Why a weights file was not read. Messages name `weights_path` and the
/// problem, and never contain the file's bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeightsFileError {
    /// A relative path that climbs out (`..`) or names the root.
    #[error(
        "weights_path: {path} must be a plain relative path inside NUMERICS_MODEL_DIR ({dir}), without .."
    )]
    NotPlain {
        /// As requested.
        path: String,
        /// The model folder.
        dir: String,
    },
    /// The model folder is missing or unreadable.
    #[error("weights_path: the model folder NUMERICS_MODEL_DIR ({dir}) cannot be opened: {reason}")]
    NoFolder {
        /// The model folder.
        dir: String,
        /// The OS's reason.
        reason: String,
    },
    /// Opening failed (missing, no permission, a symlink).
    #[error("weights_path: {path} cannot be opened: {reason}")]
    Open {
        /// As requested.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A directory, device, FIFO or socket.
    #[error("weights_path: {path} is not a regular file")]
    NotRegular {
        /// As requested.
        path: String,
    },
    /// The file lies outside the model folder.
    #[error(
        "weights_path: {path} is outside NUMERICS_MODEL_DIR ({dir}); weights are loaded only from there"
    )]
    Outside {
        /// As requested.
        path: String,
        /// The model folder.
        dir: String,
    },
    /// Larger than [`MAX_WEIGHTS_BYTES`].
    #[error("weights_path: {path} is larger than {limit} bytes")]
    TooLarge {
        /// As requested.
        path: String,
        /// The cap.
        limit: u64,
    },
    /// Reading failed part-way.
    #[error("weights_path: {path} could not be read: {reason}")]
    Read {
        /// As requested.
        path: String,
        /// The OS's reason.
        reason: String,
    },
}

/// Reads the weights file `requested` (relative to `dir`, or absolute and
/// inside it) under the checks in the module doc.
pub fn read_weights(dir: &Path, requested: &Path) -> Result<Vec<u8>, WeightsFileError> {
    let shown = requested.display().to_string();
    let dir_shown = dir.display().to_string();
    let folder = dir
        .canonicalize()
        .map_err(|error| WeightsFileError::NoFolder {
            dir: dir_shown.clone(),
            reason: error.to_string(),
        })?;
    let path = if requested.is_absolute() {
        requested.to_path_buf()
    } else {
        if !requested
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(WeightsFileError::NotPlain {
                path: shown,
                dir: dir_shown,
            });
        }
        folder.join(requested)
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // No symlink as the last component (ELOOP), and no waiting for a
        // writer if it is a FIFO; regular files ignore O_NONBLOCK.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|error| WeightsFileError::Open {
            path: shown.clone(),
            reason: if error.raw_os_error() == Some(libc::ELOOP) {
                "it is a symbolic link; only regular files are loaded".to_owned()
            } else {
                error.to_string()
            },
        })?;
    let metadata = file.metadata().map_err(|error| WeightsFileError::Open {
        path: shown.clone(),
        reason: error.to_string(),
    })?;
    if !metadata.is_file() {
        return Err(WeightsFileError::NotRegular { path: shown });
    }
    if !opened_path(&file, &path).starts_with(&folder) {
        return Err(WeightsFileError::Outside {
            path: shown,
            dir: dir_shown,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_WEIGHTS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| WeightsFileError::Read {
            path: shown.clone(),
            reason: error.to_string(),
        })?;
    if bytes.len() as u64 > MAX_WEIGHTS_BYTES {
        return Err(WeightsFileError::TooLarge {
            path: shown,
            limit: MAX_WEIGHTS_BYTES,
        });
    }
    Ok(bytes)
}

/// The file a descriptor really is, every symlink resolved (Linux's
/// `/proc/self/fd`); elsewhere, the canonical form of the opened path. An
/// empty path (never inside the folder) when neither can be read.
fn opened_path(file: &File, opened: &Path) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .or_else(|_| opened.canonicalize())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("numerics-model-dir-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn regular_files_inside_the_folder_are_read_by_relative_or_absolute_path() {
        let folder = Folder::new("inside");
        std::fs::write(folder.0.join("w.safetensors"), b"weights").unwrap();
        assert_eq!(
            read_weights(&folder.0, Path::new("w.safetensors")).unwrap(),
            b"weights"
        );
        assert_eq!(
            read_weights(&folder.0, &folder.0.join("w.safetensors")).unwrap(),
            b"weights"
        );
    }

    #[test]
    fn paths_out_of_the_folder_symlinks_and_devices_are_refused() {
        let folder = Folder::new("refused");
        let outside = Folder::new("refused-outside");
        std::fs::write(outside.0.join("secret"), b"root:*:2").unwrap();
        std::os::unix::fs::symlink(outside.0.join("secret"), folder.0.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside.0, folder.0.join("sub")).unwrap();
        std::fs::create_dir(folder.0.join("dir")).unwrap();

        let refused = |path: &Path| read_weights(&folder.0, path).unwrap_err();
        assert!(matches!(
            refused(Path::new("../refused-outside/secret")),
            WeightsFileError::NotPlain { .. }
        ));
        assert!(matches!(
            refused(&outside.0.join("secret")),
            WeightsFileError::Outside { .. }
        ));
        let link = refused(Path::new("link")).to_string();
        assert!(link.contains("symbolic link"), "{link}");
        assert!(
            matches!(
                refused(Path::new("sub/secret")),
                WeightsFileError::Outside { .. }
            ),
            "a symlinked folder on the way is resolved on the descriptor"
        );
        assert!(matches!(
            refused(Path::new("dir")),
            WeightsFileError::NotRegular { .. }
        ));
        assert!(matches!(
            refused(Path::new("/dev/zero")),
            WeightsFileError::NotRegular { .. }
        ));
        for error in [refused(Path::new("link")), refused(Path::new("sub/secret"))] {
            assert!(!error.to_string().contains("root:"), "{error}");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let folder = Folder::new("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(folder.0.join("pipe"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(
            read_weights(&folder.0, Path::new("pipe")).unwrap_err(),
            WeightsFileError::NotRegular { .. }
        ));
    }

    #[test]
    fn a_file_over_the_cap_is_refused_after_reading_at_most_the_cap() {
        let folder = Folder::new("large");
        // Sparse: no disk is spent on it.
        File::create(folder.0.join("huge"))
            .unwrap()
            .set_len(MAX_WEIGHTS_BYTES + 10)
            .unwrap();
        assert_eq!(
            read_weights(&folder.0, Path::new("huge")).unwrap_err(),
            WeightsFileError::TooLarge {
                path: "huge".into(),
                limit: MAX_WEIGHTS_BYTES
            }
        );
    }

    #[test]
    fn a_missing_folder_is_named() {
        let error = read_weights(Path::new("/nonexistent/models"), Path::new("w")).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "weights_path: the model folder NUMERICS_MODEL_DIR (/nonexistent/models)"
            ),
            "{error}"
        );
    }
}
