//! Embeds the SQL migrations from `sql/` into the binary.
//!
//! Each file must be named `NNNN_description.sql` with a unique, positive version; the
//! generated `migrations.rs` lists them in version order as `(version, name, sql)` tuples.

use std::fs;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    println!("cargo:rerun-if-changed={}", dir.display());

    let mut entries = Vec::new();
    for entry in fs::read_dir(&dir).expect("cannot read sql/") {
        let path = entry.expect("cannot read an entry of sql/").path();
        println!("cargo:rerun-if-changed={}", path.display());
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = file_name.strip_suffix(".sql") else {
            continue;
        };
        let (number, name) = stem.split_once('_').unwrap_or_else(|| {
            panic!("sql/{file_name}: expected a name like 0001_description.sql")
        });
        let version: i64 = number
            .parse()
            .ok()
            .filter(|version| *version > 0 && number.len() == 4)
            .unwrap_or_else(|| {
                panic!("sql/{file_name}: the version must be four digits, 0001 or more")
            });
        entries.push((version, name.to_owned(), path));
    }
    entries.sort();
    for pair in entries.windows(2) {
        assert!(
            pair[0].0 != pair[1].0,
            "sql/: version {:04} is used twice",
            pair[0].0
        );
    }

    let mut code = String::from("pub static EMBEDDED: &[(i64, &str, &str)] = &[\n");
    for (version, name, path) in &entries {
        code.push_str(&format!(
            "    ({version}, {name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    fs::write(out, code).expect("cannot write migrations.rs");
}
