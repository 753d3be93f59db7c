//! File-system rules of ComfyUI's `folder_paths` and `/view`: annotated names
//! (`x.png [output]`), lexical path normalisation, "stays inside the base directory"
//! checks, and the SaveImage counter scan.

use super::state::Dirs;
use std::path::{Component, Path, PathBuf};

/// Lexically normalise a path (`os.path.normpath` / `abspath` without touching the disk).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `os.path.commonpath((base, path)) == base` on normalised paths.
pub fn is_inside(base: &Path, path: &Path) -> bool {
    normalize(path).starts_with(normalize(base))
}

/// `folder_paths.annotated_filepath`: strips `[output]` / `[input]` / `[temp]` together
/// with the character before it (ComfyUI strips `len + 1`), returning the directory type.
pub fn split_annotation(name: &str) -> (String, Option<&'static str>) {
    for (tag, kind) in [("[output]", "output"), ("[input]", "input"), ("[temp]", "temp")] {
        if name.ends_with(tag) {
            let keep = name.len().saturating_sub(tag.len() + 1);
            let cut = name.char_indices().map(|(i, _)| i).take_while(|&i| i <= keep).last().unwrap_or(0);
            return (name[..cut.min(keep)].to_string(), Some(kind));
        }
    }
    (name.to_string(), None)
}

/// The file LoadImage reads for `name` (default dir `input/`), if it stays inside its dir.
pub fn annotated_input_path(dirs: &Dirs, name: &str) -> Option<PathBuf> {
    let (rel, kind) = split_annotation(name);
    let base = dirs.by_type(kind.unwrap_or("input"))?;
    let path = base.join(&rel);
    is_inside(base, &path).then(|| normalize(&path))
}

/// `get_save_image_path`: `(folder, filename, counter, subfolder)` for a prefix such as
/// `a/b/prefix`; `None` if the prefix escapes the output folder.
pub fn save_image_path(base: &Path, prefix: &str, width: u32, height: u32) -> Option<(PathBuf, String, u64, String)> {
    let prefix = expand_vars(prefix, width, height);
    let norm = normalize(Path::new(&prefix));
    let filename = norm.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let subfolder = norm.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let folder = base.join(&subfolder);
    if !is_inside(base, &folder) || norm.is_absolute() {
        return None;
    }
    let mut counter_max: Option<u64> = None;
    match std::fs::read_dir(&folder) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(c) = counter_of(&name, &filename) {
                    counter_max = Some(counter_max.map_or(c, |m| m.max(c)));
                }
            }
        }
        Err(_) => {
            let _ = std::fs::create_dir_all(&folder);
        }
    }
    Some((folder, filename, counter_max.map_or(1, |m| m + 1), subfolder))
}

/// `map_filename` + the filter of `get_save_image_path`: the counter of `name` if it is
/// `<filename>_<digits>...`.
fn counter_of(name: &str, filename: &str) -> Option<u64> {
    let rest = name.strip_prefix(filename)?;
    let rest = rest.strip_prefix('_')?;
    let digits = rest.split('_').next().unwrap_or("");
    Some(digits.parse::<u64>().unwrap_or(0))
}

fn expand_vars(prefix: &str, width: u32, height: u32) -> String {
    if !prefix.contains('%') {
        return prefix.to_string();
    }
    let now = time::OffsetDateTime::from(std::time::SystemTime::now());
    let (y, mo, d) = (now.year(), u8::from(now.month()), now.day());
    let (h, mi, s) = (now.hour(), now.minute(), now.second());
    prefix
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string())
        .replace("%year%", &y.to_string())
        .replace("%month%", &format!("{mo:02}"))
        .replace("%day%", &format!("{d:02}"))
        .replace("%hour%", &format!("{h:02}"))
        .replace("%minute%", &format!("{mi:02}"))
        .replace("%second%", &format!("{s:02}"))
}

/// Content-Type by extension, with the types aiohttp refuses to serve inline forced to
/// `application/octet-stream`.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("svg") => "image/svg+xml",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mp3") => "audio/mpeg",
        Some("wav") => "audio/x-wav",
        Some("flac") => "audio/flac",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_strip_one_extra_char() {
        assert_eq!(split_annotation("a.png [output]"), ("a.png".into(), Some("output")));
        assert_eq!(split_annotation("a.png[output]"), ("a.pn".into(), Some("output")));
        assert_eq!(split_annotation("a.png"), ("a.png".into(), None));
    }

    #[test]
    fn normalize_keeps_leading_parent_dirs() {
        assert_eq!(normalize(Path::new("../../")), PathBuf::from("../.."));
        assert_eq!(normalize(Path::new("/a/b/../../..")), PathBuf::from("/"));
        assert_eq!(normalize(Path::new("a/./b/../c")), PathBuf::from("a/c"));
    }

    #[test]
    fn counter_scan_matches_prefix_only() {
        assert_eq!(counter_of("gw_test_00003_.png", "gw_test"), Some(3));
        assert_eq!(counter_of("gw_test_b_00001_.png", "gw_test"), Some(0));
        assert_eq!(counter_of("other_00001_.png", "gw_test"), None);
    }
}
