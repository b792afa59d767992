//! A table of templates, inputs and expected outputs covering each supported construct;
//! the constructs refused at parse time with their lines; the bounds.

use std::time::Duration;

use serde_json::json;

use super::{Bounds, Inputs, Template};

fn inputs() -> Inputs {
    let map = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    Inputs {
        body: r#"{"name": "Rex", "price": 25.5, "tags": ["a", "b", "c"], "owner": {"id": 7, "email": "ana@example.com"}, "note": "say \"hi\"\n"}"#.into(),
        path: map(json!({ "id": "42" })),
        querystring: map(json!({ "page": "2" })),
        header: map(json!({ "X-Tenant": "acme" })),
        context: std::sync::Arc::new(json!({
            "requestId": "req-1",
            "httpMethod": "POST",
            "identity": { "sourceIp": "203.0.113.9" },
            "authorizer": { "claims": { "sub": "ana" } }
        })),
        stage_variables: std::sync::Arc::new(json!({ "backend": "orders.internal" })),
        body_json: Default::default(),
    }
}

fn render(template: &str) -> String {
    let t = Template::parse(template).unwrap_or_else(|e| panic!("{template:?}: {e}"));
    t.render(&inputs(), Bounds::default()).unwrap_or_else(|e| panic!("{template:?}: {e}"))
}

#[test]
fn each_construct_renders_as_a_managed_gateway_does() {
    let table: &[(&str, &str)] = &[
        ("plain text, no references", "plain text, no references"),
        ("$input.json('$.name')", r#""Rex""#),
        // A body's members in the order the client wrote them.
        ("$input.json('$.owner')", r#"{"id":7,"email":"ana@example.com"}"#),
        ("$input.json('$.tags[*]')", r#"["a","b","c"]"#),
        ("$input.path('$.name')", "Rex"),
        ("$input.path('$.price')", "25.5"),
        ("$input.path('$.owner.id')", "7"),
        ("$input.path('$.tags').size()", "3"),
        ("$input.path('$.missing')", ""),
        ("$input.params('id') $input.params('page') $input.params('x-tenant') [$input.params('none')]", "42 2 acme []"),
        ("$input.params().header.get('X-Tenant')", "acme"),
        (r#"$input.params(\"id\") $input.params(\"x-$input.params('id')\")"#, "42 "),
        ("$input.params().path.id", "42"),
        ("$context.requestId $context.identity.sourceIp $context.authorizer.claims.sub", "req-1 203.0.113.9 ana"),
        ("${stageVariables.backend}", "orders.internal"),
        ("$util.escapeJavaScript($input.path('$.note'))", r#"say \"hi\"\n"#),
        ("$util.urlEncode('a b&c=d/é')", "a+b%26c%3Dd%2F%C3%A9"),
        ("$util.urlDecode('a+b%26c')", "a b&c"),
        ("$util.base64Encode('hello')", "aGVsbG8="),
        ("$util.base64Decode('aGVsbG8=')", "hello"),
        ("$util.parseJson('{\"a\": [1, 2]}').a.get(1)", "2"),
        (
            "$util.jsonToXml($input.json('$.owner'), 'owner')",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><owner><email>ana@example.com</email><id>7</id></owner>",
        ),
        ("#set($p = $util.xmlToJson('<pet id=\"3\"><name>Rex</name></pet>').pet)$p.get('@id') $p.name", "3 Rex"),
        ("#set($n = $input.path('$.name'))$n.toUpperCase() $n.length()", "REX 3"),
        ("#set($x = 1 + 2 * 3)$x #set($y = (1 + 2) * 3)$y", "7 9"),
        ("#set($s = \"id-$input.params('id')\")$s", "id-42"),
        ("#set($m = {\"a\": 1, \"b\": [1, 2]})$m.a $m.b.size() $m", "1 2 {a=1, b=[1, 2]}"),
        ("#if($input.path('$.price') > 20)dear#{else}cheap#end", "dear"),
        ("#if($input.path('$.price') lt 20)cheap#elseif($input.path('$.name') == 'Rex')rex#{else}other#end", "rex"),
        ("#if(!$input.path('$.missing'))absent#end", "absent"),
        ("#if($input.path('$.missing') || $context.requestId)either#end", "either"),
        ("#if($context.nothing && $context.requestId)both#{else}not both#end", "not both"),
        ("[#foreach($t in $input.path('$.tags'))\"$t\"#if($foreach.hasNext),#end#end]", r#"["a","b","c"]"#),
        ("#foreach($i in [1..3])$i:$foreach.index #end", "1:0 2:1 3:2 "),
        ("#foreach($k in $input.path('$.owner').keySet())$k;#end", "id;email;"),
        ("$nothing and $!nothing", "$nothing and "),
        ("price: 10$ #notadirective", "price: 10$ #notadirective"),
        ("a## a comment\nb", "ab"),
        ("a#* a block\ncomment *#b", "ab"),
        ("#set($a = 'x')\n#if($a == 'x')\nyes\n#end\ndone", "yes\ndone"),
        (
            "$input.path('$.name').substring(1) $input.path('$.name').replace('R', 'T') $input.path('$.owner.email').split('@').get(1)",
            "ex Tex example.com",
        ),
        ("#set($list = [3, 1])$list.contains(1) $list.isEmpty() ${list}", "true false [3, 1]"),
        ("#set($q = 7 / 2)$q #set($r = 7 % 2)$r #set($f = 7.0 / 2)$f", "3 1 3.5"),
    ];
    for (template, expected) in table {
        assert_eq!(render(template), *expected, "template {template:?}");
    }
}

#[test]
fn a_template_exported_from_a_managed_gateway_renders() {
    // The shape of the managed gateway's documented example of a request mapping.
    let template = r##"#set($inputRoot = $input.path('$'))
{
  "petName": "$inputRoot.name",
  "owner": {
    "id": $inputRoot.owner.id,
    "contact": "$util.escapeJavaScript($inputRoot.owner.email)"
  },
  "tags": [
#foreach($tag in $inputRoot.tags)
    "$tag"#if($foreach.hasNext),#end
#end
  ]
}"##;
    let rendered: serde_json::Value = serde_json::from_str(&render(template)).expect("valid JSON");
    assert_eq!(
        rendered,
        json!({ "petName": "Rex", "owner": { "id": 7, "contact": "ana@example.com" }, "tags": ["a", "b", "c"] })
    );
}

#[test]
fn what_is_not_supported_is_refused_with_its_line() {
    for (template, line, says) in [
        ("ok\n#macro(x)#end", 2, "#macro is not supported"),
        ("\n\n#include('x')", 3, "#include is not supported"),
        ("$util.escapeHtml('x')", 1, "$util has no `escapeHtml(...)`"),
        ("line\n$input.headers", 2, "$input has"),
        ("$input.json('$[')", 1, "is not a JSONPath"),
        ("#if($a)\nopen", 2, "ends before #end"),
        ("#end", 1, "#end without an opening directive"),
        ("#set($a.b = 1)", 1, "not to a field"),
        ("#set($a = )", 1, "expected a value"),
        ("#foreach($a on $b)#end", 1, "expected `in`"),
        ("#* never closed", 1, "never closed"),
        ("#set($a = 'open)", 1, "never closed"),
        ("#set($a = banana)", 1, "is not a value"),
    ] {
        let e = Template::parse(template).expect_err(template);
        assert_eq!(e.line, line, "{template:?}: {e}");
        assert!(e.message.contains(says), "{template:?}: {e}");
    }
}

#[test]
fn rendering_stays_within_its_bounds_and_fails_cleanly() {
    let bounds = Bounds { max_output: 100, max_iterations: 50, max_held: 10_000, max_time: Duration::from_secs(5) };
    let run = |t: &str| Template::parse(t).unwrap().render(&inputs(), bounds);
    assert!(run("#foreach($i in [1..40])xxxxx#end").unwrap_err().message.contains("larger than 100 bytes"));
    // A text function writes straight into the output, within the same bound.
    let long = Inputs { body: "x/".repeat(60).into(), ..inputs() };
    let escaped = Template::parse("$util.escapeJavaScript($input.body)").unwrap().render(&long, bounds);
    assert!(escaped.unwrap_err().message.contains("larger than 100 bytes"));
    let e = run("#foreach($i in [1..10])#foreach($j in [1..10])#end#end").unwrap_err();
    assert!(e.message.contains("iterations"), "{e}");
    // Every value made while rendering, a variable's or an expression's, is held until the
    // rendering ends, within a bound.
    let e = run("#foreach($i in [1..40])#set($l = [1..40])#end").unwrap_err();
    assert!(e.message.contains("hold more than 10000 bytes"), "{e}");
    let upper = format!("#set($s = '{}')#foreach($i in [1..40])#if($s.toUpperCase() == '')#end#end", "x".repeat(300));
    let e = run(&upper).unwrap_err();
    assert!(e.message.contains("hold more than 10000 bytes"), "{e}");
    assert_eq!(run("#foreach($i in [1..4])#set($l = [1..40])#end$l.size()").unwrap(), "40");
    assert!(run("#foreach($i in [1..1000000000])#end").unwrap_err().message.contains("range"));
    assert!(run("$input.path('$.name').frobnicate()").unwrap_err().message.contains("a string has no method"));
    assert!(run("$util.parseJson('{not json')").unwrap_err().message.contains("parseJson"));
    assert!(run("$util.xmlToJson('<a><b></a>')").unwrap_err().message.contains("xmlToJson"));
    assert!(run("$util.jsonToXml('{\"1st\": 1}', 'r')").unwrap_err().message.contains("not an XML name"));
    let not_json = Inputs { body: "<xml/>".into(), ..inputs() };
    let e = Template::parse("$input.path('$.a')").unwrap().render(&not_json, bounds).unwrap_err();
    assert!(e.message.contains("not JSON"), "{e}");
    // Division by zero is null, as in Velocity, not a failure.
    assert_eq!(run("#set($z = 1 / 0)[$!z]").unwrap(), "[]");
    // Deep nesting is refused when parsed, not a stack overflow when rendered.
    let deep = "(".repeat(500) + "1" + &")".repeat(500);
    assert!(Template::parse(&format!("#set($a = {deep})")).is_err());
}

#[test]
fn escape_javascript_escapes_like_java_and_copies_the_rest() {
    let mut inputs = inputs();
    inputs.body = "plain a\"b'c\\d/e\nf\tg\u{1}h\u{8}\u{c}\r é 😀 ~".into();
    let rendered = Template::parse("$util.escapeJavaScript($input.body)").unwrap().render(&inputs, Bounds::default());
    assert_eq!(rendered.unwrap(), r#"plain a\"b\'c\\d\/e\nf\tg\u0001h\b\f\r \u00E9 \uD83D\uDE00 ~"#);
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// `$util.escapeJavaScript` one character at a time, as the table of Java's escapes says.
    fn escaped_by_character(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                '/' => out.push_str("\\/"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn escaping_sixteen_bytes_at_a_time_matches_escaping_each_character(
            text in r"([ -~]{0,20}|[\x00-\x1f\x7f\u{80}-\u{10ffff}\x22\x27\x5c/]){0,12}"
        ) {
            let inputs = Inputs { body: text.clone().into(), ..inputs() };
            let rendered = Template::parse("$util.escapeJavaScript($input.body)").unwrap().render(&inputs, Bounds::default());
            prop_assert_eq!(rendered.unwrap(), escaped_by_character(&text));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_template_parses_or_fails_and_renders_without_panicking(
            template in r"([a-z{}\[\]()'\x22 .,:=!<>+*/%-]|\$|#|\$input\.path\('\$\.[a-z]'\)|#set\(|#if\(|#end|#foreach\(\$x in |\$foreach\.hasNext|[0-9]|\n){0,60}"
        ) {
            if let Ok(t) = Template::parse(&template) {
                let bounds = Bounds { max_output: 10_000, max_iterations: 1000, max_held: 100_000, max_time: Duration::from_millis(50) };
                let _ = t.render(&inputs(), bounds);
            }
        }
    }
}

#[test]
fn a_body_parsed_before_is_not_parsed_again_and_params_are_noted() {
    // Validation hands its document over: the template reads that, not the text.
    let parsed = crate::json_document::JsonDocument::parse(r#"{"name": "parsed"}"#.into()).unwrap();
    let given = Inputs { body_json: super::BodyJson::parsed(std::sync::Arc::new(parsed)), ..inputs() };
    let t = Template::parse("$input.path('$.name') $input.json('$')").unwrap();
    assert_eq!(t.render(&given, Bounds::default()).unwrap(), r#"parsed {"name":"parsed"}"#);
    assert!(!t.reads().params);
    assert!(Template::parse("#set($h = $input.params().header)$h").unwrap().reads().params);
    assert!(Template::parse("$input.params('id')").unwrap().reads().params);
    assert!(!t.reads().context.any());
    // `$context` is read member by member, or whole when a member is not named.
    let reads = Template::parse("#if($context.stage == 'prod')p#end$context.requestId").unwrap().reads().clone();
    assert!(reads.context.member("stage") && reads.context.member("requestId"));
    assert!(!reads.context.member("identity"));
    assert!(Template::parse("#set($c = $context.authorizer)$c").unwrap().reads().context.member("authorizer"));
    let whole = Template::parse("#set($c = $context)$c.stage").unwrap().reads().clone();
    assert!(whole.context.member("identity"), "the whole of it");
    assert!(Template::parse("$context.get('stage')").unwrap().reads().context.member("path"));
    let union = reads.union(Template::parse("$context.path").unwrap().reads().clone());
    assert!(union.context.member("path") && union.context.member("stage") && !union.context.member("identity"));
}

#[test]
fn values_borrowed_from_the_body_walk_like_copies() {
    let t = Template::parse(
        "#set($b = $input.path('$'))#foreach($k in $b.keySet())$k=$b.get($k).toString()#if($foreach.hasNext);#end#end|$b.owner.get('id')|$b.tags.get(1)|$b['name']",
    )
    .unwrap();
    let out = t.render(&inputs(), Bounds::default()).unwrap();
    assert!(
        out.starts_with(
            "name=Rex;price=25.5;tags=[a, b, c];owner={id=7, email=ana@example.com};note=say \"hi\"\n|7|b|Rex"
        ),
        "{out}"
    );
}

#[test]
fn a_key_from_a_key_set_reads_the_map_it_is_asked_of() {
    // `get` with a key from a `keySet()` list reads by the key's position only in that
    // list's own map; another map with the same keys, a list made long before, and a key
    // equal to one in the list but not from it all read by name.
    let t = Template::parse(concat!(
        "#set($a = $util.parseJson('{\"x\": 1, \"y\": 2}'))",
        "#set($c = $util.parseJson('{\"y\": \"cy\", \"x\": \"cx\", \"z\": 0}'))",
        "#set($keys = $a.keySet())",
        "#foreach($k in $keys)$a.get($k)/$c.get($k);#end|",
        "#foreach($i in [1..6])#set($other = $c.keySet())#end",
        "#foreach($k in $keys)$a.get($k),#end|",
        "#foreach($k in $other)$a.get($k)/$c.get($k);#end|",
        "$a.get('y')|$keys.get(1)"
    ))
    .unwrap();
    let out = t.render(&inputs(), Bounds::default()).unwrap();
    assert_eq!(out, "1/cx;2/cy;|1,2,|1/cx;2/cy;/0;|2|y");
}

#[test]
fn a_rendering_reserves_what_the_latest_one_wrote() {
    let t = Template::parse("#foreach($i in [1..50])item $i, #end").unwrap();
    let first = t.render(&inputs(), Bounds::default()).unwrap();
    let second = t.render(&inputs(), Bounds::default()).unwrap();
    assert_eq!(first, second);
    // Grown a few bytes at a time, its capacity would be a power of two (441 bytes here).
    assert_eq!(second.capacity(), first.len());
    // A copy keeps the hint; a bound still caps what is reserved.
    let copy = t.clone();
    let tight = Bounds { max_output: 16, ..Bounds::default() };
    assert!(copy.render(&inputs(), tight).is_err());
    assert_eq!(copy, t);
}
