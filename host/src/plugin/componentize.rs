//! Turning a WASI preview1 core module (what C, Go and other toolchains
//! write) into a plugin component: embed the plugin WIT when the module does
//! not carry it, adapt WASI preview1 to preview2 with the adapter matching
//! this host's wasmtime, and check the result against the plugin world.

use std::collections::BTreeSet;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasmparser::{Parser, Payload};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::{Resolve, WorldId, WorldItem};

/// The WIT package plugins are built against, as compiled into the host.
pub const WIT: &str = include_str!("../../../wit/plugin.wit");

/// The package every plugin world belongs to.
const PACKAGE: &str = "taskhost:plugin@0.1.0";

/// The worlds a plugin can be built for.
pub const WORLDS: [&str; 3] = ["handler-plugin", "bulk-handler-plugin", "source-plugin"];

/// Why a core module could not be made into a plugin component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    /// The input is not WebAssembly.
    #[error("not a WebAssembly file: {0}")]
    NotWasm(String),
    /// The input is a component already.
    #[error("it is already a component: give it to `host run --plugin` as it is")]
    AlreadyComponent,
    /// The module has a `_start` and no `_initialize`: a program, not a library.
    #[error(
        "it is a command-model module (it exports `_start`): build it as a reactor \
         (C: clang -mexec-model=reactor; Go: go build -buildmode=c-shared; \
         Rust: a cdylib)"
    )]
    CommandModule,
    /// `--world` names no plugin world.
    #[error("no plugin world is called {0:?}; the worlds are {worlds}", worlds = WORLDS.join(", "))]
    UnknownWorld(String),
    /// The module's embedded bindings are for another world or package.
    #[error("it was built for world `{built}`, not `{asked}`")]
    WorldMismatch {
        /// The world the module's bindings name.
        built: String,
        /// The world asked for.
        asked: String,
    },
    /// The module lacks exports its world requires.
    #[error("it does not export what world `{world}` needs: {}", missing.join(", "))]
    MissingExports {
        /// The world checked against.
        world: String,
        /// Core export names that are absent.
        missing: Vec<String>,
    },
    /// The module is malformed or wit-component refused it.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
}

/// A finished component and how it was made.
#[derive(Debug)]
pub struct Componentized {
    /// The component's bytes.
    pub component: Vec<u8>,
    /// The world it implements.
    pub world: String,
    /// True if the plugin WIT was embedded here (the module carried none).
    pub embedded_wit: bool,
}

/// Makes a plugin component of `module`; `world` is needed only when the
/// module carries no bindings metadata (default: `handler-plugin`).
pub fn componentize(
    module: &[u8],
    world: Option<&str>,
) -> Result<Componentized, ComponentizeError> {
    if let Some(w) = world
        && !WORLDS.contains(&w)
    {
        return Err(ComponentizeError::UnknownWorld(w.to_owned()));
    }
    let info = inspect(module)?;
    if info.exports.iter().any(|e| e == "_start")
        && !info.exports.iter().any(|e| e == "_initialize")
    {
        return Err(ComponentizeError::CommandModule);
    }
    let mut module = module.to_vec();
    let (world, embedded_wit) = if info.has_metadata {
        let (_, bindgen) =
            wit_component::metadata::decode(&module).map_err(ComponentizeError::Invalid)?;
        // The metadata decodes to a merged world of its own name: identify
        // it by what it exports and imports.
        let fits =
            matching_worlds(&bindgen.resolve, bindgen.world).map_err(ComponentizeError::Invalid)?;
        let name = match world {
            Some(w) if fits.contains(&w) => w,
            None if !fits.is_empty() => fits[0],
            _ => {
                return Err(ComponentizeError::WorldMismatch {
                    built: fits.first().map_or_else(
                        || describe(&bindgen.resolve, bindgen.world),
                        |w| format!("{PACKAGE}/{w}"),
                    ),
                    asked: match world {
                        Some(w) => format!("{PACKAGE}/{w}"),
                        None => format!("a world of {PACKAGE}"),
                    },
                });
            }
        };
        check_exports(&bindgen.resolve, bindgen.world, name, &info.exports)?;
        (name.to_owned(), false)
    } else {
        let name = world.unwrap_or("handler-plugin");
        let (resolve, id) = plugin_world(name).map_err(ComponentizeError::Invalid)?;
        check_exports(&resolve, id, name, &info.exports)?;
        embed_component_metadata(&mut module, &resolve, id, StringEncoding::UTF8)
            .map_err(ComponentizeError::Invalid)?;
        (name.to_owned(), true)
    };
    let component = ComponentEncoder::default()
        .module(&module)
        .and_then(|e| {
            e.validate(true).adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut e| e.encode())
        .map_err(ComponentizeError::Invalid)?;
    Ok(Componentized {
        component,
        world,
        embedded_wit,
    })
}

/// What the encoder needs to know about a core module before it starts.
struct ModuleInfo {
    exports: Vec<String>,
    has_metadata: bool,
}

fn inspect(bytes: &[u8]) -> Result<ModuleInfo, ComponentizeError> {
    match bytes {
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => {}
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => return Err(ComponentizeError::AlreadyComponent),
        _ if bytes.len() < 8 => {
            return Err(ComponentizeError::NotWasm(format!(
                "the file is only {} bytes long",
                bytes.len()
            )));
        }
        _ => {
            return Err(ComponentizeError::NotWasm(
                "it does not start with the WebAssembly magic number".into(),
            ));
        }
    }
    let mut info = ModuleInfo {
        exports: Vec::new(),
        has_metadata: false,
    };
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| ComponentizeError::Invalid(e.into()))? {
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export.map_err(|e| ComponentizeError::Invalid(e.into()))?;
                    info.exports.push(export.name.to_owned());
                }
            }
            // wit-bindgen names these `component-type:...`; they survive
            // linking unless a strip tool removes them.
            Payload::CustomSection(c) if c.name().starts_with("component-type") => {
                info.has_metadata = true;
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The plugin WIT, resolved, and the world called `name` in it.
fn plugin_world(name: &str) -> anyhow::Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let pkg = resolve.push_str("plugin.wit", WIT)?;
    let id = resolve.select_world(&[pkg], Some(name))?;
    Ok((resolve, id))
}

/// The interfaces a world imports (`false`) or exports (`true`), by name.
fn interfaces(resolve: &Resolve, world: WorldId, exports: bool) -> BTreeSet<String> {
    let w = &resolve.worlds[world];
    let items = if exports { &w.exports } else { &w.imports };
    items
        .iter()
        .filter(|(_, item)| matches!(item, WorldItem::Interface { .. }))
        .map(|(key, _)| resolve.name_world_key(key))
        .collect()
}

/// The plugin worlds a module's bindings fit: the same exports, and no
/// import the plugin world lacks. Narrowest first.
fn matching_worlds(resolve: &Resolve, world: WorldId) -> anyhow::Result<Vec<&'static str>> {
    let exports = interfaces(resolve, world, true);
    let imports = interfaces(resolve, world, false);
    let mut fits = Vec::new();
    for name in WORLDS {
        let (ours, id) = plugin_world(name)?;
        if interfaces(&ours, id, true) == exports
            && imports.is_subset(&interfaces(&ours, id, false))
        {
            fits.push(name);
        }
    }
    Ok(fits)
}

/// What a foreign world exports and imports, for an error message.
fn describe(resolve: &Resolve, world: WorldId) -> String {
    let list = |exports| {
        let names: Vec<String> = interfaces(resolve, world, exports).into_iter().collect();
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    };
    format!(
        "a world exporting {} and importing {}",
        list(true),
        list(false)
    )
}

/// Checks that the module exports every function the world exports, under
/// the core names the canonical ABI gives them.
fn check_exports(
    resolve: &Resolve,
    world: WorldId,
    name: &str,
    exports: &[String],
) -> Result<(), ComponentizeError> {
    let mut missing = Vec::new();
    for (key, item) in &resolve.worlds[world].exports {
        let wanted: Vec<String> = match item {
            WorldItem::Interface { id, .. } => {
                let prefix = resolve.name_world_key(key);
                resolve.interfaces[*id]
                    .functions
                    .keys()
                    .map(|f| format!("{prefix}#{f}"))
                    .collect()
            }
            WorldItem::Function(f) => vec![f.name.clone()],
            WorldItem::Type { .. } => Vec::new(),
        };
        missing.extend(wanted.into_iter().filter(|w| !exports.contains(w)));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ComponentizeError::MissingExports {
            world: name.to_owned(),
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reactor core module exporting the handler world's one function.
    const HANDLER: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
        (func (export "taskhost:plugin/handler@0.1.0#handle") (param i32 i32) (result i32)
            i32.const 0))"#;

    fn wasm(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn a_core_module_becomes_a_component_of_its_world() {
        let done = componentize(&wasm(HANDLER), None).unwrap();
        assert!(done.embedded_wit);
        assert_eq!(done.world, "handler-plugin");
        assert_eq!(&done.component[4..8], &[0x0d, 0x00, 0x01, 0x00]);
        let wit_component::DecodedWasm::Component(resolve, world) =
            wit_component::decode(&done.component).unwrap()
        else {
            panic!("not decoded as a component");
        };
        let exports: Vec<String> = resolve.worlds[world]
            .exports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect();
        assert_eq!(exports, ["taskhost:plugin/handler@0.1.0"]);
    }

    #[test]
    fn missing_exports_are_named() {
        let module = wasm(r#"(module (memory (export "memory") 1))"#);
        let err = componentize(&module, Some("source-plugin")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("world `source-plugin`")
                && text.contains("taskhost:plugin/source@0.1.0#poll"),
            "{text}"
        );
    }

    #[test]
    fn a_command_module_is_told_to_build_as_a_reactor() {
        let module = wasm(r#"(module (func (export "_start")))"#);
        let err = componentize(&module, None).unwrap_err();
        assert!(matches!(err, ComponentizeError::CommandModule), "{err}");
        assert!(err.to_string().contains("-mexec-model=reactor"));
    }

    #[test]
    fn embedded_bindings_of_another_world_are_refused_when_a_world_is_asked() {
        let mut module = wasm(HANDLER);
        let (resolve, id) = plugin_world("handler-plugin").unwrap();
        embed_component_metadata(&mut module, &resolve, id, StringEncoding::UTF8).unwrap();
        let err = componentize(&module, Some("source-plugin")).unwrap_err();
        assert!(
            matches!(err, ComponentizeError::WorldMismatch { .. }),
            "{err}"
        );
        let ok = componentize(&module, None).unwrap();
        assert!(!ok.embedded_wit);
    }

    #[test]
    fn other_inputs_get_a_reason() {
        let component = wasm("(component)");
        assert!(matches!(
            componentize(&component, None),
            Err(ComponentizeError::AlreadyComponent)
        ));
        assert!(matches!(
            componentize(b"#!/bin/sh\necho", None),
            Err(ComponentizeError::NotWasm(_))
        ));
        assert!(matches!(
            componentize(&wasm(HANDLER), Some("nope")),
            Err(ComponentizeError::UnknownWorld(_))
        ));
    }
}
