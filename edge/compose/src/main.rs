//! `rekey-edge-compose`: builds rekey-proxy.wasm from the three components
//! with wac-graph (the library behind `wac`), wiring by interface name:
//!
//! ```text
//! effects ──types, host, signer──▶ rekey (unchanged) ──client──▶ front ──▶ wasi:http/incoming-handler
//!    └─────────────────types, relay──────────────────────▶ front
//! ```
//!
//! `types` holds the `body` resource, which the effects export: one resource
//! type for all three, so body handles pass between them unchanged; the
//! front reads and writes bodies through the effects' `relay`.
//!
//! Every other import (wasi:*) stays an import of the result, shared by all
//! three. `imports FILE` lists a component's imports, one per line.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions, NodeId};

const TYPES: &str = "rekey:oauth2/types@0.5.0";
const HOST: &str = "rekey:oauth2/host@0.5.0";
const SIGNER: &str = "rekey:oauth2/signer@0.5.0";
const RELAY: &str = "rekey:edge/relay@0.2.0";
const OPERATOR: &str = "rekey:edge/operator@0.2.0";
const CLIENT: &str = "rekey:oauth2/client@0.5.0";
const CONFIG: &str = "wasi:config/store@0.2.0-draft";
const HANDLER: &str = "wasi:http/incoming-handler@0.2.0";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["imports", file] => {
            for name in imports(&std::fs::read(file).with_context(|| format!("reading {file}"))?)? {
                println!("{name}");
            }
            Ok(())
        }
        [
            "proxy",
            "--effects",
            effects,
            "--rekey",
            rekey,
            "--front",
            front,
            "--out",
            out,
        ] => {
            let bytes = compose(&read(effects)?, &read(rekey)?, &read(front)?, None)?;
            std::fs::write(out, &bytes).with_context(|| format!("writing {out}"))?;
            println!("{out}: {} bytes", bytes.len());
            Ok(())
        }
        [
            "proxy",
            "--effects",
            effects,
            "--rekey",
            rekey,
            "--front",
            front,
            "--noconfig",
            noconfig,
            "--out",
            out,
        ] => {
            let empty = read(noconfig)?;
            let bytes = compose(&read(effects)?, &read(rekey)?, &read(front)?, Some(&empty))?;
            std::fs::write(out, &bytes).with_context(|| format!("writing {out}"))?;
            println!("{out}: {} bytes", bytes.len());
            Ok(())
        }
        _ => bail!(
            "usage: rekey-edge-compose proxy --effects E.wasm --rekey R.wasm --front F.wasm [--noconfig N.wasm] --out OUT.wasm\n       rekey-edge-compose imports C.wasm"
        ),
    }
}

fn read(path: &str) -> Result<Vec<u8>> {
    std::fs::read(PathBuf::from(path)).with_context(|| format!("reading {path}"))
}

/// `noconfig`: an empty `wasi:config/store` plugged into the adapters'
/// import, so the result does not import wasi:config (the environment
/// configures it).
fn compose(effects: &[u8], rekey: &[u8], front: &[u8], noconfig: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let mut register = |name: &str, bytes: &[u8]| -> Result<_> {
        let package = Package::from_bytes(name, None, bytes.to_vec(), graph.types_mut())
            .with_context(|| format!("loading {name}"))?;
        Ok(graph.register_package(package)?)
    };
    let effects = register("rekey-edge:effects", effects)?;
    let rekey = register("rekey:component", rekey)?;
    let front = register("rekey-edge:front", front)?;

    let effects = graph.instantiate(effects);
    let rekey = graph.instantiate(rekey);
    let front = graph.instantiate(front);
    let export = |graph: &mut CompositionGraph, from: NodeId, name: &str| -> Result<NodeId> {
        graph
            .alias_instance_export(from, name)
            .with_context(|| format!("no export {name}"))
    };
    let types = export(&mut graph, effects, TYPES)?;
    let host = export(&mut graph, effects, HOST)?;
    plug(&mut graph, rekey, TYPES, types)?;
    plug(&mut graph, rekey, HOST, host)?;
    let signer = export(&mut graph, effects, SIGNER)?;
    plug(&mut graph, rekey, SIGNER, signer)?;
    let client = export(&mut graph, rekey, CLIENT)?;
    plug(&mut graph, front, TYPES, types)?;
    let relay = export(&mut graph, effects, RELAY)?;
    plug(&mut graph, front, RELAY, relay)?;
    let operator = export(&mut graph, effects, OPERATOR)?;
    plug(&mut graph, front, OPERATOR, operator)?;
    plug(&mut graph, front, CLIENT, client)?;
    if let Some(bytes) = noconfig {
        let package = Package::from_bytes(
            "rekey-edge:noconfig",
            None,
            bytes.to_vec(),
            graph.types_mut(),
        )
        .context("loading noconfig")?;
        let id = graph.register_package(package)?;
        let empty = graph.instantiate(id);
        let store = export(&mut graph, empty, CONFIG)?;
        plug(&mut graph, effects, CONFIG, store)?;
        plug(&mut graph, front, CONFIG, store)?;
    }
    let handler = export(&mut graph, front, HANDLER)?;
    graph.export(handler, HANDLER)?;
    Ok(graph.encode(EncodeOptions::default())?)
}

/// Sets an instantiation argument. Both rekey and front import `types`: the
/// `body` resource is defined once, by the effects instance, so a handle the
/// front makes is the one rekey passes to `http-send` and gets back.
fn plug(graph: &mut CompositionGraph, to: NodeId, name: &str, from: NodeId) -> Result<()> {
    graph
        .set_instantiation_argument(to, name, from)
        .with_context(|| format!("wiring {name}"))
}

/// The component's import names (top level only).
fn imports(bytes: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    names.push(import?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}
