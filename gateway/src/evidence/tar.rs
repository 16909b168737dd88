//! The bundle as one POSIX ustar archive, for download through the API, and its unpacking by
//! `gatehouse evidence download`. A bundle is flat: plain files with short names, so the writer
//! and the reader handle exactly that, and the reader refuses anything else (a path, a link, a
//! device, an oversized entry, a bad checksum) rather than write outside its directory.

use std::io::{Read, Write};
use std::path::Path;

const BLOCK: usize = 512;

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}", width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

fn header(name: &str, size: u64) -> std::io::Result<[u8; BLOCK]> {
    // ustar's 11 octal digits of size: files under 8 GiB.
    if size >= 1 << 33 {
        return Err(std::io::Error::other(format!("`{name}` is 8 GiB or more")));
    }
    if name.is_empty() || name.len() > 99 || name.contains('/') {
        return Err(std::io::Error::other(format!(
            "`{name}` is no bundle file name"
        )));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o600);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Writes every file of the flat directory `dir`, in name order, as a ustar archive.
pub fn write_dir(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut buf = vec![0u8; 64 * 1024];
    for n in names {
        let mut f = std::fs::File::open(dir.join(&n))?;
        let size = f.metadata()?.len();
        out.write_all(&header(&n, size)?)?;
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let k = f.read(&mut buf[..want])?;
            if k == 0 {
                return Err(std::io::Error::other(format!(
                    "`{n}` shrank while archived"
                )));
            }
            out.write_all(&buf[..k])?;
            left -= k as u64;
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        out.write_all(&vec![0u8; pad])?;
    }
    out.write_all(&[0u8; BLOCK * 2])?;
    out.flush()
}

/// Unpacks a flat ustar archive into the empty directory `dir`; returns the files written.
/// Entries larger than `max_entry` bytes, or more than 64 of them, are refused.
pub fn unpack(input: &mut dyn Read, dir: &Path, max_entry: u64) -> std::io::Result<usize> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut n = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut h = [0u8; BLOCK];
        input.read_exact(&mut h)?;
        if h.iter().all(|b| *b == 0) {
            return Ok(n);
        }
        let mut check = h;
        check[148..156].copy_from_slice(b"        ");
        let sum: u64 = check.iter().map(|b| u64::from(*b)).sum();
        let field = |r: std::ops::Range<usize>| -> String {
            String::from_utf8_lossy(&h[r])
                .trim_matches(['\0', ' '])
                .to_string()
        };
        if u64::from_str_radix(&field(148..156), 8).ok() != Some(sum) {
            return Err(bad(
                "a header's checksum does not match (archive corrupted)".into(),
            ));
        }
        let name = field(0..100);
        let safe = !name.is_empty()
            && !name.contains(['/', '\\'])
            && name != "."
            && name != ".."
            && name.chars().all(|c| c.is_ascii_graphic());
        if !safe || (h[156] != b'0' && h[156] != 0) {
            return Err(bad(format!(
                "entry `{}` is not a plain bundle file",
                name.escape_debug()
            )));
        }
        let size =
            u64::from_str_radix(&field(124..136), 8).map_err(|_| bad("bad entry size".into()))?;
        if size > max_entry || n >= 64 {
            return Err(bad(format!(
                "entry `{name}` is too large, or there are too many"
            )));
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&name))?;
        let mut left = size;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..k])?;
            f.write_all(&buf[..k])?;
            left -= k as u64;
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        input.read_exact(&mut buf[..pad])?;
        f.sync_all()?;
        n += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_directory_round_trips_and_paths_are_refused() {
        let base = std::env::temp_dir().join(format!("gh-tar-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("x.csv"), "1,2\n").unwrap();
        std::fs::write(a.join("big.jsonl"), vec![b'z'; 70_000]).unwrap();
        let mut ar = Vec::new();
        write_dir(&a, &mut ar).unwrap();
        assert_eq!(ar.len() % BLOCK, 0);
        assert_eq!(unpack(&mut ar.as_slice(), &b, 1 << 20).unwrap(), 2);
        assert_eq!(std::fs::read(b.join("big.jsonl")).unwrap().len(), 70_000);
        // A name with a path in it is refused, even with a right checksum.
        let mut evil = header("x", 0).unwrap();
        evil[..6].copy_from_slice(b"../etc");
        evil[148..156].copy_from_slice(b"        ");
        let sum: u64 = evil.iter().map(|b| u64::from(*b)).sum();
        evil[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let c = base.join("c");
        std::fs::create_dir_all(&c).unwrap();
        let mut input = evil.to_vec();
        input.extend_from_slice(&[0u8; BLOCK * 2]);
        assert!(unpack(&mut input.as_slice(), &c, 1 << 20).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
