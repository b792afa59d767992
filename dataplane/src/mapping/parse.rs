//! Parsing a mapping template into its tree, once, with every unsupported construct
//! refused with its line.

use serde_json::Value;

/// A template, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub(super) nodes: Vec<Node>,
    /// How many names its references use: each has a slot (see [`Reference::slot`]).
    pub(super) slots: usize,
    /// The literal JSONPaths of `$input.json(...)` and `$input.path(...)`, compiled once.
    pub(super) paths: Vec<(String, serde_json_path::JsonPath)>,
    /// What it reads besides the body.
    pub(super) reads: Reads,
    /// How long its latest output was: a rendering reserves that much at once.
    pub(super) output_size: OutputSize,
}

/// The length of a template's latest output, kept so that the next rendering reserves its
/// output once instead of growing it a few bytes at a time (a 2 KiB body reshaped costs a
/// dozen reallocations and copies otherwise). Renderings of the same template on several
/// threads each store theirs; any recent one is a good guess. A hint, not part of what the
/// template is: copies start from it and templates compare equal whatever their hints.
#[derive(Debug, Default)]
pub(super) struct OutputSize(std::sync::atomic::AtomicUsize);

impl OutputSize {
    pub(super) fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores `size` if it is new: renderings of the same size on several cores then only
    /// read the shared line, never bounce it between them.
    pub(super) fn set(&self, size: usize) {
        if self.get() != size {
            self.0.store(size, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Clone for OutputSize {
    fn clone(&self) -> Self {
        OutputSize(self.get().into())
    }
}

impl PartialEq for OutputSize {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a template reads besides its body: the request's parameters (`$input.params(...)`)
/// and `$context` (`$stageVariables` is shared, so always there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    pub params: bool,
    pub context: ContextReads,
}

/// What a template reads of `$context`: nothing, some of its members by name
/// (`$context.requestId`), or all of it (`$context` itself, or a member chosen while
/// rendering).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ContextReads {
    #[default]
    Nothing,
    Members(std::collections::BTreeSet<String>),
    Whole,
}

impl ContextReads {
    /// Whether `$context` is read at all.
    pub fn any(&self) -> bool {
        *self != ContextReads::Nothing
    }

    /// Whether the member `name` is read.
    pub fn member(&self, name: &str) -> bool {
        match self {
            ContextReads::Nothing => false,
            ContextReads::Members(names) => names.contains(name),
            ContextReads::Whole => true,
        }
    }

    fn union(self, other: ContextReads) -> ContextReads {
        match (self, other) {
            (ContextReads::Whole, _) | (_, ContextReads::Whole) => ContextReads::Whole,
            (ContextReads::Nothing, other) | (other, ContextReads::Nothing) => other,
            (ContextReads::Members(mut a), ContextReads::Members(b)) => {
                a.extend(b);
                ContextReads::Members(a)
            }
        }
    }

    fn add(&mut self, member: Option<&str>) {
        let read = match member {
            Some(name) => ContextReads::Members([name.to_string()].into()),
            None => ContextReads::Whole,
        };
        *self = std::mem::take(self).union(read);
    }
}

impl Reads {
    /// What either reads (for a stage that renders one of several templates).
    pub fn union(self, other: Reads) -> Reads {
        Reads { params: self.params || other.params, context: self.context.union(other.context) }
    }
}

/// What is wrong with a template, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Text(String),
    /// A reference in the text, and how it was written (shown when it is undefined).
    Ref(Reference, String),
    /// `#set`: the variable's slot, its value.
    Set(usize, Expr),
    If(Vec<(Expr, Vec<Node>)>, Vec<Node>),
    /// `#foreach`: the loop variable's slot, the items, the body.
    Foreach(usize, Expr, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reference {
    /// The root name's slot among the template's variables: names are resolved when the
    /// template is parsed, so reading a variable while rendering compares no strings.
    pub slot: usize,
    /// What the root is when no variable of that name is set.
    pub builtin: Builtin,
    pub quiet: bool,
    pub steps: Vec<Step>,
    pub line: usize,
}

/// The names a template finds set for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Builtin {
    Input,
    Util,
    Context,
    StageVariables,
    /// `$foreach`, inside a loop.
    Foreach,
    /// Not one of them: a variable, or a reference never set.
    None,
}

impl Builtin {
    fn of(name: &str) -> Builtin {
        match name {
            "input" => Builtin::Input,
            "util" => Builtin::Util,
            "context" => Builtin::Context,
            "stageVariables" => Builtin::StageVariables,
            "foreach" => Builtin::Foreach,
            _ => Builtin::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    Field(String),
    Index(Expr),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    Literal(Value),
    /// A double-quoted string: text and references.
    Interpolated(Vec<Node>),
    List(Vec<Expr>),
    Range(Box<Expr>, Box<Expr>),
    Map(Vec<(Expr, Expr)>),
    Ref(Reference),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// The `$util` functions there are.
pub(super) const UTIL: &[&str] = &[
    "escapeJavaScript",
    "urlEncode",
    "urlDecode",
    "base64Encode",
    "base64Decode",
    "parseJson",
    "toJson",
    "jsonToXml",
    "xmlToJson",
];
/// Directives of Velocity that mapping templates do not support.
const UNSUPPORTED: &[&str] = &["macro", "include", "parse", "evaluate", "define", "stop", "break"];
/// How deeply expressions and blocks may nest.
const MAX_DEPTH: usize = 64;

struct Parser<'t> {
    text: &'t str,
    pos: usize,
    depth: usize,
    /// Every root name the references use, in the order first seen: a name's slot.
    names: Vec<String>,
}

type Parsed<T> = Result<T, TemplateError>;

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl Template {
    /// Parses `text`; any construct that is not supported is an error with its line.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parser = Parser { text, pos: 0, depth: 0, names: Vec::new() };
        let (nodes, end) = parser.nodes(&[])?;
        if let Some(end) = end {
            return Err(parser.error(format!("#{end} without an opening directive")));
        }
        let slots = parser.names.len();
        let mut template =
            Template { nodes, slots, paths: Vec::new(), reads: Reads::default(), output_size: OutputSize::default() };
        template.check()?;
        Ok(template)
    }

    /// What the template reads besides the body: a caller leaves the rest out of the
    /// [`Inputs`](super::Inputs) it renders with.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Refuses references to `$input` and `$util` members that do not exist, and JSONPaths
    /// that do not parse; keeps the compiled paths and notes what the template reads.
    fn check(&mut self) -> Parsed<()> {
        #[derive(Default)]
        struct Found {
            paths: Vec<(String, serde_json_path::JsonPath)>,
            reads: Reads,
        }
        fn nodes(list: &[Node], found: &mut Found) -> Parsed<()> {
            for node in list {
                match node {
                    Node::Text(_) => {}
                    Node::Ref(r, _) => reference(r, found)?,
                    Node::Set(_, e) => expr(e, found)?,
                    Node::If(branches, otherwise) => {
                        for (condition, body) in branches {
                            expr(condition, found)?;
                            nodes(body, found)?;
                        }
                        nodes(otherwise, found)?;
                    }
                    Node::Foreach(_, items, body) => {
                        expr(items, found)?;
                        nodes(body, found)?;
                    }
                }
            }
            Ok(())
        }
        fn expr(e: &Expr, found: &mut Found) -> Parsed<()> {
            match e {
                Expr::Literal(_) => Ok(()),
                Expr::Interpolated(list) => nodes(list, found),
                Expr::List(items) => items.iter().try_for_each(|e| expr(e, found)),
                Expr::Range(a, b) | Expr::Binary(_, a, b) => expr(a, found).and_then(|_| expr(b, found)),
                Expr::Map(pairs) => pairs.iter().try_for_each(|(k, v)| expr(k, found).and_then(|_| expr(v, found))),
                Expr::Ref(r) => reference(r, found),
                Expr::Not(a) | Expr::Negate(a) => expr(a, found),
            }
        }
        fn reference(r: &Reference, found: &mut Found) -> Parsed<()> {
            let error = |message: String| Err(TemplateError { line: r.line, message });
            for step in &r.steps {
                match step {
                    Step::Index(e) => expr(e, found)?,
                    Step::Call(_, args) => args.iter().try_for_each(|e| expr(e, found))?,
                    Step::Field(_) => {}
                }
            }
            match (r.builtin, r.steps.first()) {
                (Builtin::Input, Some(Step::Field(f))) if f == "body" => Ok(()),
                (Builtin::Input, Some(Step::Call(m, args))) if m == "json" || m == "path" => match args.as_slice() {
                    [Expr::Literal(Value::String(path))] => match serde_json_path::JsonPath::parse(path) {
                        Ok(compiled) => {
                            if !found.paths.iter().any(|(p, _)| p == path) {
                                found.paths.push((path.clone(), compiled));
                            }
                            Ok(())
                        }
                        Err(e) => error(format!("`{path}` is not a JSONPath: {e}")),
                    },
                    [_] => Ok(()),
                    _ => error(format!("$input.{m} takes one JSONPath")),
                },
                (Builtin::Input, Some(Step::Call(m, args))) if m == "params" && args.len() <= 1 => {
                    found.reads.params = true;
                    Ok(())
                }
                (Builtin::Context, first) => {
                    let member = match first {
                        Some(Step::Field(name)) => Some(name.as_str()),
                        _ => None,
                    };
                    found.reads.context.add(member);
                    Ok(())
                }
                (Builtin::Input, Some(other)) => error(format!(
                    "$input has `body`, `json(path)`, `path(path)` and `params()`, not {}",
                    describe(other)
                )),
                (Builtin::Input, None) => error("use `$input.body`, `$input.json(...)` or `$input.path(...)`".into()),
                (Builtin::Util, Some(Step::Call(f, _))) if UTIL.contains(&f.as_str()) => Ok(()),
                (Builtin::Util, Some(other)) => {
                    error(format!("$util has no {} (it has {})", describe(other), UTIL.join(", ")))
                }
                _ => Ok(()),
            }
        }
        fn describe(step: &Step) -> String {
            match step {
                Step::Field(f) => format!("`{f}`"),
                Step::Call(m, _) => format!("`{m}(...)`"),
                Step::Index(_) => "an index".into(),
            }
        }
        let mut found = Found::default();
        nodes(&self.nodes, &mut found)?;
        self.paths = found.paths;
        self.reads = found.reads;
        Ok(())
    }
}

impl<'t> Parser<'t> {
    fn line(&self) -> usize {
        self.text[..self.pos.min(self.text.len())].matches('\n').count() + 1
    }

    fn error(&self, message: impl Into<String>) -> TemplateError {
        TemplateError { line: self.line(), message: message.into() }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.text.as_bytes().get(self.pos + offset).copied()
    }

    fn rest(&self) -> &'t str {
        &self.text[self.pos..]
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &str) -> Parsed<()> {
        self.skip_spaces();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected `{}` {what}", c as char)))
        }
    }

    fn ident(&mut self) -> Option<&'t str> {
        let start = self.pos;
        if !self.peek().is_some_and(is_ident_start) {
            return None;
        }
        while self.peek().is_some_and(is_ident) {
            self.pos += 1;
        }
        Some(&self.text[start..self.pos])
    }

    fn nest(&mut self) -> Parsed<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
        }
        Ok(())
    }

    /// After a directive alone on its line, the rest of the line (its newline included).
    fn gobble_line(&mut self) {
        let rest = self.rest();
        let line_end = rest.find('\n');
        let tail = &rest[..line_end.unwrap_or(rest.len())];
        if tail.trim().is_empty() {
            self.pos += line_end.map_or(rest.len(), |n| n + 1);
        }
    }

    /// Nodes until one of the directives in `ends` (returned) or the end of the text.
    fn nodes(&mut self, ends: &[&str]) -> Parsed<(Vec<Node>, Option<String>)> {
        self.nest()?;
        let mut nodes = Vec::new();
        let mut text = String::new();
        let flush = |text: &mut String, nodes: &mut Vec<Node>| {
            if !text.is_empty() {
                nodes.push(Node::Text(std::mem::take(text)));
            }
        };
        while let Some(c) = self.peek() {
            match c {
                b'#' if self.peek_at(1) == Some(b'#') => {
                    let rest = self.rest();
                    self.pos += rest.find('\n').map_or(rest.len(), |n| n + 1);
                }
                b'#' if self.peek_at(1) == Some(b'*') => {
                    let Some(end) = self.rest().find("*#") else {
                        return Err(self.error("a `#*` comment is never closed with `*#`"));
                    };
                    self.pos += end + 2;
                }
                b'#' => {
                    let start = self.pos;
                    self.pos += 1;
                    let braced = self.peek() == Some(b'{');
                    if braced {
                        self.pos += 1;
                    }
                    let Some(name) = self.ident() else {
                        self.pos = start + 1;
                        text.push('#');
                        continue;
                    };
                    if braced && self.peek() == Some(b'}') {
                        self.pos += 1;
                    }
                    match name {
                        "set" | "if" | "foreach" => {
                            flush(&mut text, &mut nodes);
                            let node = match name {
                                "set" => self.set()?,
                                "if" => self.if_block()?,
                                _ => self.foreach()?,
                            };
                            nodes.push(node);
                        }
                        "elseif" | "else" | "end" => {
                            if !ends.contains(&name) {
                                return Err(self.error(format!("#{name} without an opening directive")));
                            }
                            flush(&mut text, &mut nodes);
                            self.depth -= 1;
                            return Ok((nodes, Some(name.to_string())));
                        }
                        other if UNSUPPORTED.contains(&other) => {
                            return Err(self.error(format!("#{other} is not supported in mapping templates")));
                        }
                        // `#ff0000`, `#tag`: text.
                        _ => text.push_str(&self.text[start..self.pos]),
                    }
                }
                b'$' => {
                    let start = self.pos;
                    match self.reference()? {
                        Some(r) => {
                            flush(&mut text, &mut nodes);
                            nodes.push(Node::Ref(r, self.text[start..self.pos].to_string()));
                        }
                        None => {
                            self.pos = start + 1;
                            text.push('$');
                        }
                    }
                }
                _ => {
                    let rest = self.rest();
                    let n = rest.find(['#', '$']).unwrap_or(rest.len());
                    text.push_str(&rest[..n]);
                    self.pos += n;
                }
            }
        }
        flush(&mut text, &mut nodes);
        if let Some(end) = ends.last() {
            return Err(self.error(format!("the template ends before #{end}")));
        }
        self.depth -= 1;
        Ok((nodes, None))
    }

    /// A plain `$variable` (no field, index or call), as `#set` and `#foreach` name one; the
    /// errors say what is `missing`, or that the reference is `not_plain`.
    fn variable(&mut self, missing: &str, not_plain: &str) -> Parsed<usize> {
        self.skip_spaces();
        let Some(Reference { slot, steps, .. }) = self.reference()? else { return Err(self.error(missing)) };
        if !steps.is_empty() {
            return Err(self.error(not_plain));
        }
        Ok(slot)
    }

    /// The slot of the root name `name`.
    fn slot(&mut self, name: &str) -> usize {
        match self.names.iter().position(|n| n == name) {
            Some(slot) => slot,
            None => {
                self.names.push(name.to_string());
                self.names.len() - 1
            }
        }
    }

    fn set(&mut self) -> Parsed<Node> {
        self.expect(b'(', "after #set")?;
        let root = self
            .variable("#set needs a `$variable`", "#set assigns to a `$variable`, not to a field or an index of one")?;
        self.expect(b'=', "in #set")?;
        let value = self.expr()?;
        self.expect(b')', "to close #set")?;
        self.gobble_line();
        Ok(Node::Set(root, value))
    }

    fn condition(&mut self, what: &str) -> Parsed<Expr> {
        self.expect(b'(', &format!("after #{what}"))?;
        let condition = self.expr()?;
        self.expect(b')', &format!("to close #{what}"))?;
        self.gobble_line();
        Ok(condition)
    }

    fn if_block(&mut self) -> Parsed<Node> {
        let mut branches = Vec::new();
        let mut condition = self.condition("if")?;
        loop {
            let (body, end) = self.nodes(&["elseif", "else", "end"])?;
            branches.push((condition, body));
            match end.as_deref() {
                Some("elseif") => condition = self.condition("elseif")?,
                Some("else") => {
                    self.gobble_line();
                    let (otherwise, _) = self.nodes(&["end"])?;
                    self.gobble_line();
                    return Ok(Node::If(branches, otherwise));
                }
                _ => {
                    self.gobble_line();
                    return Ok(Node::If(branches, Vec::new()));
                }
            }
        }
    }

    fn foreach(&mut self) -> Parsed<Node> {
        self.expect(b'(', "after #foreach")?;
        let root = self.variable("#foreach needs a `$variable` to loop with", "#foreach loops with a `$variable`")?;
        self.skip_spaces();
        if self.ident() != Some("in") {
            return Err(self.error("expected `in` in #foreach"));
        }
        let items = self.expr()?;
        self.expect(b')', "to close #foreach")?;
        self.gobble_line();
        let (body, _) = self.nodes(&["end"])?;
        self.gobble_line();
        Ok(Node::Foreach(root, items, body))
    }

    /// A reference at `$`, or `None` when what follows the `$` is not one (then it is text).
    fn reference(&mut self) -> Parsed<Option<Reference>> {
        let line = self.line();
        if self.peek() != Some(b'$') {
            return Ok(None);
        }
        self.pos += 1;
        let quiet = self.peek() == Some(b'!');
        if quiet {
            self.pos += 1;
        }
        let braced = self.peek() == Some(b'{');
        if braced {
            self.pos += 1;
        }
        let Some(root) = self.ident() else { return Ok(None) };
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                Some(b'.') if self.peek_at(1).is_some_and(is_ident_start) => {
                    self.pos += 1;
                    let name = self.ident().unwrap_or_default().to_string();
                    if self.peek() == Some(b'(') {
                        self.pos += 1;
                        steps.push(Step::Call(name, self.arguments()?));
                    } else {
                        steps.push(Step::Field(name));
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.nest()?;
                    let index = self.expr()?;
                    self.depth -= 1;
                    self.expect(b']', "to close an index")?;
                    steps.push(Step::Index(index));
                }
                _ => break,
            }
        }
        if braced {
            if self.peek() != Some(b'}') {
                return Err(self.error("expected `}` to close `${`"));
            }
            self.pos += 1;
        }
        let slot = self.slot(root);
        Ok(Some(Reference { slot, builtin: Builtin::of(root), quiet, steps, line }))
    }

    fn arguments(&mut self) -> Parsed<Vec<Expr>> {
        let mut args = Vec::new();
        self.skip_spaces();
        if self.peek() == Some(b')') {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            self.skip_spaces();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok(args);
                }
                _ => return Err(self.error("expected `,` or `)` in the arguments")),
            }
        }
    }

    fn expr(&mut self) -> Parsed<Expr> {
        self.nest()?;
        let e = self.binary(0);
        self.depth -= 1;
        e
    }

    /// The operator at the cursor of precedence at least `min`, without consuming it.
    fn operator(&mut self) -> Option<(BinaryOp, usize, usize)> {
        self.skip_spaces();
        let rest = self.rest();
        let symbols: &[(&str, BinaryOp, usize)] = &[
            ("||", BinaryOp::Or, 0),
            ("&&", BinaryOp::And, 1),
            ("==", BinaryOp::Eq, 2),
            ("!=", BinaryOp::Ne, 2),
            ("<=", BinaryOp::Le, 3),
            (">=", BinaryOp::Ge, 3),
            ("<", BinaryOp::Lt, 3),
            (">", BinaryOp::Gt, 3),
            ("+", BinaryOp::Add, 4),
            ("-", BinaryOp::Sub, 4),
            ("*", BinaryOp::Mul, 5),
            ("/", BinaryOp::Div, 5),
            ("%", BinaryOp::Rem, 5),
        ];
        for (symbol, op, precedence) in symbols {
            if rest.starts_with(symbol) {
                return Some((*op, *precedence, symbol.len()));
            }
        }
        let words: &[(&str, BinaryOp, usize)] = &[
            ("or", BinaryOp::Or, 0),
            ("and", BinaryOp::And, 1),
            ("eq", BinaryOp::Eq, 2),
            ("ne", BinaryOp::Ne, 2),
            ("le", BinaryOp::Le, 3),
            ("ge", BinaryOp::Ge, 3),
            ("lt", BinaryOp::Lt, 3),
            ("gt", BinaryOp::Gt, 3),
        ];
        for (word, op, precedence) in words {
            if rest.starts_with(word) && !rest.as_bytes().get(word.len()).is_some_and(|c| is_ident(*c)) {
                return Some((*op, *precedence, word.len()));
            }
        }
        None
    }

    fn binary(&mut self, min: usize) -> Parsed<Expr> {
        let mut left = self.unary()?;
        while let Some((op, precedence, len)) = self.operator() {
            if precedence < min {
                break;
            }
            self.pos += len;
            let right = self.binary(precedence + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Parsed<Expr> {
        self.skip_spaces();
        if self.peek() == Some(b'!') && self.peek_at(1) != Some(b'=') {
            self.pos += 1;
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.rest().starts_with("not") && !self.peek_at(3).is_some_and(is_ident) {
            self.pos += 3;
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek() == Some(b'-') && !self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Negate(Box::new(inner)));
        }
        self.primary()
    }

    /// The rest of a double-quoted string, up to its closing `quote`: template text, whose
    /// references render into the string.
    fn interpolated(&mut self, quote: &str) -> Parsed<Expr> {
        let Some(end) = self.rest().find(quote) else { return Err(self.error("a string is never closed")) };
        let inner = &self.text[self.pos..self.pos + end];
        // The string's references share the template's names.
        let names = std::mem::take(&mut self.names);
        let mut nested = Parser { text: inner, pos: 0, depth: self.depth, names };
        let parsed = nested.nodes(&[]);
        self.names = nested.names;
        let (nodes, _) = parsed.map_err(|e| TemplateError { line: self.line(), ..e })?;
        self.pos += end + quote.len();
        Ok(Expr::Interpolated(nodes))
    }

    fn primary(&mut self) -> Parsed<Expr> {
        self.skip_spaces();
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let inner = self.expr()?;
                self.expect(b')', "to close `(`")?;
                Ok(inner)
            }
            Some(b'$') => match self.reference()? {
                Some(r) => Ok(Expr::Ref(r)),
                None => Err(self.error("expected a `$reference`")),
            },
            Some(b'\'') => {
                self.pos += 1;
                let Some(end) = self.rest().find('\'') else { return Err(self.error("a string is never closed")) };
                let literal = self.rest()[..end].to_string();
                self.pos += end + 1;
                Ok(Expr::Literal(Value::String(literal)))
            }
            Some(b'"') => {
                self.pos += 1;
                self.interpolated("\"")
            }
            // `\"text\"`: a double-quoted string whose quotes were escaped on the way into
            // a JSON or YAML document; exported APIs carry templates like that, read here as
            // the double-quoted string they were meant to be.
            Some(b'\\') if self.peek_at(1) == Some(b'"') => {
                self.pos += 2;
                self.interpolated("\\\"")
            }
            Some(c) if c.is_ascii_digit() || c == b'-' => {
                let start = self.pos;
                self.pos += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit())
                    || (self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()))
                {
                    self.pos += 1;
                }
                let digits = &self.text[start..self.pos];
                let number = match digits.parse::<i64>() {
                    Ok(i) => Value::from(i),
                    Err(_) => digits
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .ok_or_else(|| self.error(format!("`{digits}` is not a number")))?,
                };
                Ok(Expr::Literal(number))
            }
            Some(b'[') => {
                self.pos += 1;
                self.skip_spaces();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Expr::List(Vec::new()));
                }
                let first = self.expr()?;
                self.skip_spaces();
                if self.rest().starts_with("..") {
                    self.pos += 2;
                    let last = self.expr()?;
                    self.expect(b']', "to close a range")?;
                    return Ok(Expr::Range(Box::new(first), Box::new(last)));
                }
                let mut items = vec![first];
                loop {
                    self.skip_spaces();
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            items.push(self.expr()?);
                        }
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Expr::List(items));
                        }
                        _ => return Err(self.error("expected `,` or `]` in a list")),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut pairs = Vec::new();
                loop {
                    self.skip_spaces();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(Expr::Map(pairs));
                    }
                    let key = self.expr()?;
                    self.expect(b':', "in a map")?;
                    let value = self.expr()?;
                    pairs.push((key, value));
                    self.skip_spaces();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return Err(self.error("expected `,` or `}` in a map")),
                    }
                }
            }
            _ => match self.ident() {
                Some("true") => Ok(Expr::Literal(Value::Bool(true))),
                Some("false") => Ok(Expr::Literal(Value::Bool(false))),
                Some("null") => Ok(Expr::Literal(Value::Null)),
                Some(word) => Err(self.error(format!("`{word}` is not a value (write `$` before a variable)"))),
                None => Err(self.error("expected a value")),
            },
        }
    }
}
