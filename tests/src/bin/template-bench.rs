//! The mapping templates' cost, in one thread: the REST benchmark's request template
//! (`#foreach` over a 2 KiB JSON body's 20 keys, each value through
//! `$util.escapeJavaScript`) and its response template, rendered many times against the same
//! inputs. Run it with `tests/bench/template.sh` (release build); `SMOKE=1` renders a few.
//! Prints the median of batches, in microseconds per rendering; the request template both with
//! the body already parsed (request validation hands its parse over) and parsing it.

use meridian_dataplane::mapping::{Bounds, Inputs, Template};
use serde_json::{Map, Value};

/// The node's allocator: rendering allocates, and the figures should be the node's.
#[global_allocator]
static ALLOCATOR: meridian_allocator::Mimalloc = meridian_allocator::Mimalloc;

const REQUEST: &str = r##"#set($b = $input.path('$')){"order": {#foreach($k in $b.keySet())"$k": "$util.escapeJavaScript($b.get($k))"#if($foreach.hasNext),#end#end}, "request": "$context.requestId"}"##;
const RESPONSE: &str =
    r#"{"ok": true, "request": "$context.requestId", "upstream": "$util.escapeJavaScript($input.body)"}"#;

/// The posted order: 20 properties of 95 characters, 2 KiB of JSON.
fn order() -> String {
    let properties: Vec<String> = (1..=20).map(|i| format!("\"p{i:02}\": \"{}\"", "v".repeat(95))).collect();
    format!("{{{}}}", properties.join(","))
}

fn inputs(body: String) -> Inputs {
    Inputs {
        body: body.into(),
        body_json: Default::default(),
        path: Map::new(),
        querystring: Map::new(),
        header: Map::from_iter([("content-type".to_string(), Value::String("application/json".into()))]),
        context: std::sync::Arc::new(
            serde_json::json!({"requestId": "0123456789abcdef0123456789abcdef", "stage": "bench"}),
        ),
        stage_variables: std::sync::Arc::new(serde_json::json!({"backend": "127.0.0.1:18491"})),
    }
}

/// The median of `batches` batches of 200 renderings with `inputs`; `parse` renders each with
/// a body not yet parsed (the template parses it), else with the body parsed once, as
/// request validation hands it over.
fn measure(template: &Template, inputs: &Inputs, parse: bool, batches: usize) -> f64 {
    meridian_tests::median_micros_per_call(batches, || {
        let fresh;
        let inputs = if parse {
            fresh = Inputs { body_json: Default::default(), ..inputs.clone() };
            &fresh
        } else {
            inputs
        };
        let rendered = template.render(inputs, Bounds::default()).expect("the template renders");
        std::hint::black_box(rendered);
    })
}

fn main() {
    let smoke = std::env::var("SMOKE").is_ok_and(|v| v == "1");
    let batches = if smoke { 3 } else { 300 };

    let request = Template::parse(REQUEST).expect("the request template parses");
    let response = Template::parse(RESPONSE).expect("the response template parses");
    let body = order();
    let rendered = request.render(&inputs(body.clone()), Bounds::default()).expect("renders");
    let parsed: Value = serde_json::from_str(&rendered).expect("the request template makes JSON");
    assert_eq!(parsed["order"].as_object().map(Map::len), Some(20), "{rendered}");
    println!("mapping templates, median of {batches} batches of 200 renderings, one thread");
    let (order, answer) = (inputs(body), inputs(rendered));
    println!(
        "request template (2 KiB body, 20 keys), body parsed by validation: {:8.2} us",
        measure(&request, &order, false, batches)
    );
    println!(
        "request template (2 KiB body, 20 keys), body parsed here:          {:8.2} us",
        measure(&request, &order, true, batches)
    );
    println!(
        "response template (2 KiB body escaped):                            {:8.2} us",
        measure(&response, &answer, true, batches)
    );
}
