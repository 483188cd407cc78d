//! Writes the wire contract's JSON Schemas to `schemas/` (run from anywhere in the repo).

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in trailguard_common::contract::schemas() {
        std::fs::write(dir.join(name), text)?;
        println!("wrote schemas/{name}");
    }
    Ok(())
}
