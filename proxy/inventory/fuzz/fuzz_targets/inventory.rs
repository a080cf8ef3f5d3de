//! The inventory, TOML or JSON (first byte picks), on any text: never panics; every
//! diagnostic renders; an inventory it accepts expands, deterministically, into a routes
//! file that the routes parser (the daemon's) accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if pick & 1 == 0 {
        inventory::Format::Toml
    } else {
        inventory::Format::Json
    };
    match inventory::parse_as("inventory.fuzz", text, format) {
        Err(diags) => {
            assert!(!diags.0.is_empty(), "an error without a diagnostic");
            for d in &diags.0 {
                let _ = d.to_string();
            }
        }
        Ok(inv) => {
            let out = inventory::expand(&inv);
            assert_eq!(out, inventory::expand(&inv), "expansion is not deterministic");
            if let Err(d) = routes::parse("routes.toml", &out) {
                panic!("an accepted inventory expanded into an invalid routes file:\n{d}\n---\n{out}");
            }
        }
    }
});
