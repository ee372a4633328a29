//! JSON Schemas of the events, generated from the Rust types (schemars) and committed under
//! `schemas/`. A test fails with the regenerate command when the committed files drift.

use schemars::{JsonSchema, Schema, generate::SchemaSettings};
use serde_json::{Value, json};

use crate::event::{self, Event};

/// The command that regenerates the committed schemas.
pub const REGENERATE: &str = "cargo run -- schema --out schemas";

fn generator() -> schemars::SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

fn pretty(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).expect("schemas serialize");
    s.push('\n');
    s
}

/// Schema of one bare payload line (`{"type": KIND, ...}`), as `zolog append` accepts it.
fn payload_schema<T: JsonSchema>(kind: &str) -> Value {
    let schema: Schema = generator().into_root_schema_for::<T>();
    let mut v = schema.to_value();
    let obj = v.as_object_mut().expect("struct schemas are objects");
    obj.insert("$id".into(), json!(format!("urn:zolog:payload:{kind}")));
    obj.insert("title".into(), json!(kind));
    let props = obj
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("properties is an object");
    props.insert("type".into(), json!({"const": kind}));
    let required = obj
        .entry("required")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("required is an array");
    required.insert(0, json!("type"));
    v
}

/// Every schema file: (path relative to `schemas/`, contents).
pub fn generate() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut envelope = generator().into_root_schema_for::<Event>().to_value();
    if let Some(obj) = envelope.as_object_mut() {
        obj.insert("$id".into(), json!("urn:zolog:event"));
        obj.insert(
            "description".into(),
            json!("One event as `zolog log` prints it (one JSON object per line)."),
        );
    }
    files.push(("event.json".to_owned(), pretty(&envelope)));
    macro_rules! kinds {
        ($($t:ident),* $(,)?) => {
            $( files.push((
                format!("payloads/{}.json", stringify!($t)),
                pretty(&payload_schema::<event::$t>(stringify!($t))),
            )); )*
        };
    }
    crate::with_payload_kinds!(kinds);
    debug_assert_eq!(files.len(), 1 + event::Payload::KINDS.len());
    files
}

/// The envelope schema as a JSON value (for validating `zolog log` output).
pub fn event_schema() -> Value {
    generator().into_root_schema_for::<Event>().to_value()
}

/// The schema a bare payload line of `kind` must satisfy.
pub fn payload_schema_for(kind: &str) -> Option<Value> {
    generate()
        .into_iter()
        .find(|(p, _)| p == &format!("payloads/{kind}.json"))
        .map(|(_, s)| serde_json::from_str(&s).expect("generated schemas parse"))
}
