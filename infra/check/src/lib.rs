//! Checks of the Bicep templates that run without a Bicep compiler (none can be installed where
//! CI runs): a tree-sitter parse with no ERROR/MISSING node, and small queries on the syntax tree
//! (parameters and their defaults, object keys of a variable, role assignments, string literals)
//! that the tests compare with the handler, the function folders and the docs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tree_sitter::{Node, Parser, Tree};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the Bicep grammar: {0}")]
    Language(#[from] tree_sitter::LanguageError),
    #[error("{0}: the parser returned no tree")]
    NoTree(String),
}

/// The repository root (this crate lives in `infra/check`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read(path: &Path) -> Result<String, CheckError> {
    std::fs::read_to_string(path).map_err(|source| CheckError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A parsed Bicep file.
pub struct Bicep {
    pub name: String,
    pub source: String,
    pub tree: Tree,
}

/// A syntax problem: an ERROR node (unparsable text) or a MISSING node (a token the parser had
/// to invent), with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub kind: &'static str,
    pub text: String,
}

/// A `param` declaration: its type, default expression (source text), `@allowed` values and
/// the bounds of `@minValue`/`@maxValue` (int) and `@minLength`/`@maxLength` (string, array).
#[derive(Debug, Clone, Default)]
pub struct Param {
    pub type_name: String,
    pub default: Option<String>,
    pub allowed: Vec<String>,
    pub min_value: Option<i64>,
    pub max_value: Option<i64>,
    pub min_length: Option<i64>,
    pub max_length: Option<i64>,
}

/// One `Microsoft.Authorization/roleAssignments` resource: what it is scoped to, which role
/// (the expression after `roleDefinitions',`), which principal expression, and its `name`
/// expression (normally `guid(<scope>.id, <principal>, <role>)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    pub symbol: String,
    pub scope: String,
    pub role: String,
    pub principal: String,
    pub name: String,
}

impl Bicep {
    pub fn parse(name: &str, source: String) -> Result<Self, CheckError> {
        let mut parser = Parser::new();
        parser.set_language(&tree_sitter_bicep::LANGUAGE.into())?;
        let tree = parser
            .parse(&source, None)
            .ok_or_else(|| CheckError::NoTree(name.to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            source,
            tree,
        })
    }

    pub fn load(path: &Path) -> Result<Self, CheckError> {
        Self::parse(&path.display().to_string(), read(path)?)
    }

    fn text(&self, node: Node) -> &str {
        node.utf8_text(self.source.as_bytes()).unwrap_or_default()
    }

    /// Every ERROR and MISSING node.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        walk(self.tree.root_node(), &mut |n| {
            if n.is_error() || n.is_missing() {
                out.push(Problem {
                    line: n.start_position().row + 1,
                    kind: if n.is_missing() { "MISSING" } else { "ERROR" },
                    text: self.text(n).chars().take(80).collect(),
                });
            }
        });
        out
    }

    /// Top-level statements with the decorators that precede each.
    fn declarations(&self) -> Vec<(Vec<Node<'_>>, Node<'_>)> {
        let root = self.tree.root_node();
        let mut out = Vec::new();
        let mut pending = Vec::new();
        let mut cursor = root.walk();
        for child in root.named_children(&mut cursor) {
            match child.kind() {
                "decorators" => pending.push(child),
                k if k.ends_with("_declaration") || k == "user_defined_function" => {
                    out.push((std::mem::take(&mut pending), child));
                }
                _ => pending.clear(),
            }
        }
        out
    }

    /// `param` declarations by name.
    pub fn params(&self) -> BTreeMap<String, Param> {
        let mut out = BTreeMap::new();
        for (decorators, decl) in self.declarations() {
            if decl.kind() != "parameter_declaration" {
                continue;
            }
            let mut c = decl.walk();
            let kids: Vec<Node> = decl.named_children(&mut c).collect();
            let Some(name) = kids.first() else { continue };
            let mut param = Param {
                type_name: kids
                    .get(1)
                    .map(|n| self.text(*n).to_owned())
                    .unwrap_or_default(),
                default: kids.get(2).map(|n| self.text(*n).to_owned()),
                ..Param::default()
            };
            for d in decorators {
                let text = self.text(d);
                if let Some(pos) = text.find("@allowed(") {
                    param.allowed = literals(&text[pos..]);
                }
                param.min_value = param.min_value.or(decorator_int(text, "minValue"));
                param.max_value = param.max_value.or(decorator_int(text, "maxValue"));
                param.min_length = param.min_length.or(decorator_int(text, "minLength"));
                param.max_length = param.max_length.or(decorator_int(text, "maxLength"));
            }
            out.insert(self.text(*name).to_owned(), param);
        }
        out
    }

    /// The keys of the object a `var` is set to (`var appSettings = { KEY: … }`), if it is one.
    pub fn object_keys_of_var(&self, var: &str) -> Option<Vec<String>> {
        for (_, decl) in self.declarations() {
            if decl.kind() != "variable_declaration" {
                continue;
            }
            let mut c = decl.walk();
            let kids: Vec<Node> = decl.named_children(&mut c).collect();
            if kids.first().map(|n| self.text(*n)) != Some(var) {
                continue;
            }
            let object = kids.get(1).and_then(|e| find_kind(*e, "object"))?;
            return Some(self.object_keys(object));
        }
        None
    }

    fn object_keys(&self, object: Node) -> Vec<String> {
        let mut keys = Vec::new();
        let mut c = object.walk();
        for prop in object.named_children(&mut c) {
            if prop.kind() != "object_property" {
                continue;
            }
            if let Some(key) = prop.named_child(0) {
                keys.push(self.text(key).trim_matches('\'').to_owned());
            }
        }
        keys
    }

    /// The value (source text) of `key` in an object node.
    fn property<'a>(&'a self, object: Node<'a>, key: &str) -> Option<Node<'a>> {
        let mut c = object.walk();
        let found = object.named_children(&mut c).find(|p| {
            p.kind() == "object_property"
                && p.named_child(0).map(|k| self.text(k).trim_matches('\'')) == Some(key)
        });
        found.and_then(|p| p.named_child(1))
    }

    /// Resource declarations: (symbol, type string, body object).
    pub fn resources(&self) -> Vec<(String, String, Node<'_>)> {
        let mut out = Vec::new();
        for (_, decl) in self.declarations() {
            if decl.kind() != "resource_declaration" {
                continue;
            }
            let mut c = decl.walk();
            let kids: Vec<Node> = decl.named_children(&mut c).collect();
            let (Some(sym), Some(ty)) = (kids.first(), kids.get(1)) else {
                continue;
            };
            if let Some(body) = kids.iter().skip(2).find_map(|n| find_kind(*n, "object")) {
                out.push((
                    self.text(*sym).to_owned(),
                    self.text(*ty).trim_matches('\'').to_owned(),
                    body,
                ));
            }
        }
        out
    }

    /// Resource declarations with their `name` expression: (symbol, type string, name text).
    pub fn resource_names(&self) -> Vec<(String, String, String)> {
        self.resources()
            .into_iter()
            .map(|(symbol, ty, body)| {
                let name = self
                    .property(body, "name")
                    .map(|n| self.text(n).to_owned())
                    .unwrap_or_default();
                (symbol, ty, name)
            })
            .collect()
    }

    /// Every role assignment resource of the file.
    pub fn role_assignments(&self) -> Vec<RoleAssignment> {
        let mut out = Vec::new();
        for (symbol, ty, body) in self.resources() {
            if !ty.starts_with("Microsoft.Authorization/roleAssignments@") {
                continue;
            }
            let scope = self
                .property(body, "scope")
                .map(|n| self.text(n).to_owned())
                .unwrap_or_default();
            let props = self.property(body, "properties");
            let get = |key: &str| {
                props
                    .and_then(|p| self.property(p, key))
                    .map(|n| self.text(n).to_owned())
                    .unwrap_or_default()
            };
            let role_expr = get("roleDefinitionId");
            // subscriptionResourceId('Microsoft.Authorization/roleDefinitions', <role>)
            let role = role_expr
                .rsplit_once(',')
                .map(|(_, r)| r.trim().trim_end_matches(')').trim().to_owned())
                .unwrap_or(role_expr);
            let name = self
                .property(body, "name")
                .map(|n| self.text(n).to_owned())
                .unwrap_or_default();
            out.push(RoleAssignment {
                symbol,
                scope,
                role,
                principal: get("principalId"),
                name,
            });
        }
        out
    }

    /// `output` declarations: name and value expression (source text).
    pub fn outputs(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (_, decl) in self.declarations() {
            if decl.kind() != "output_declaration" {
                continue;
            }
            let mut c = decl.walk();
            let kids: Vec<Node> = decl.named_children(&mut c).collect();
            // name, type, value
            if let [name, _, .., value] = kids.as_slice() {
                out.insert(self.text(*name).to_owned(), self.text(*value).to_owned());
            }
        }
        out
    }

    /// Module declarations: (symbol, path, the `params` object as key → expression text).
    pub fn modules(&self) -> Vec<(String, String, BTreeMap<String, String>)> {
        let mut out = Vec::new();
        for (_, decl) in self.declarations() {
            if decl.kind() != "module_declaration" {
                continue;
            }
            let mut c = decl.walk();
            let kids: Vec<Node> = decl.named_children(&mut c).collect();
            let (Some(sym), Some(path)) = (kids.first(), kids.get(1)) else {
                continue;
            };
            let mut params = BTreeMap::new();
            let body = kids.iter().skip(2).find_map(|n| find_kind(*n, "object"));
            if let Some(p) = body.and_then(|b| self.property(b, "params")) {
                for key in self.object_keys(p) {
                    if let Some(v) = self.property(p, &key) {
                        params.insert(key, self.text(v).to_owned());
                    }
                }
            }
            out.push((
                self.text(*sym).to_owned(),
                self.text(*path).trim_matches('\'').to_owned(),
                params,
            ));
        }
        out
    }

    /// The raw text of every string literal (interpolations included as written).
    pub fn strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.tree.root_node(), &mut |n| {
            if n.kind() == "string" {
                out.push(self.text(n).trim_matches('\'').to_owned());
            }
        });
        out
    }

    /// `name: 'guid'` pairs of a `var` object (the role tables).
    pub fn string_map_of_var(&self, var: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (_, decl) in self.declarations() {
            if decl.kind() != "variable_declaration" {
                continue;
            }
            let mut c = decl.walk();
            let kids: Vec<Node> = decl.named_children(&mut c).collect();
            if kids.first().map(|n| self.text(*n)) != Some(var) {
                continue;
            }
            if let Some(object) = kids.get(1).and_then(|e| find_kind(*e, "object")) {
                for key in self.object_keys(object) {
                    if let Some(v) = self.property(object, &key) {
                        out.insert(key, self.text(v).trim_matches('\'').to_owned());
                    }
                }
            }
        }
        out
    }
}

fn walk<'a>(node: Node<'a>, f: &mut impl FnMut(Node<'a>)) {
    f(node);
    let mut c = node.walk();
    for child in node.children(&mut c) {
        walk(child, f);
    }
}

/// The node itself or its first descendant of `kind` (an expression wraps its object).
fn find_kind<'a>(node: Node<'a>, kind: &str) -> Option<Node<'a>> {
    if node.kind() == kind {
        return Some(node);
    }
    let mut c = node.walk();
    let kids: Vec<Node> = node.named_children(&mut c).collect();
    kids.into_iter().find_map(|k| find_kind(k, kind))
}

/// The integer argument of `@<name>(<int>)` in a decorator's text.
fn decorator_int(text: &str, name: &str) -> Option<i64> {
    let at = text.find(&format!("@{name}("))?;
    let rest = &text[at + name.len() + 2..];
    rest.split_once(')')?.0.trim().parse().ok()
}

/// Quoted literals and bare numbers/booleans of a small expression such as `@allowed([ 'a' 2 ])`.
fn literals(text: &str) -> Vec<String> {
    let inner = text
        .split_once('[')
        .and_then(|(_, r)| r.rsplit_once(']'))
        .map(|(l, _)| l)
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut rest = inner;
    while let Some(start) = rest.find(|c: char| c == '\'' || c.is_ascii_alphanumeric()) {
        rest = &rest[start..];
        if let Some(stripped) = rest.strip_prefix('\'') {
            let end = stripped.find('\'').unwrap_or(stripped.len());
            out.push(stripped[..end].to_owned());
            rest = stripped.get(end + 1..).unwrap_or_default();
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// Every file below `dir` (recursively) whose name ends with `ext`.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "check" && n != "target") {
                    stack.push(p);
                }
            } else if p.to_string_lossy().ends_with(ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Names in `text` that look like settings: `CRDB_DELTA_*`, `AZURE_*`, `FUNCTIONS_*`,
/// `WEBSITE_*`, `AzureWebJobs*`, as quoted in Rust (`"NAME"`) or Markdown (`` `NAME` ``).
pub fn setting_names(text: &str) -> Vec<String> {
    const PREFIXES: [&str; 5] = [
        "CRDB_DELTA_",
        "AZURE_",
        "FUNCTIONS_",
        "WEBSITE_",
        "AzureWebJobs",
    ];
    let mut out = Vec::new();
    for quote in ['"', '`'] {
        for (i, piece) in text.split(quote).enumerate() {
            if i % 2 == 0 {
                continue;
            }
            let name = piece.split('=').next().unwrap_or_default();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if valid
                && PREFIXES.iter().any(|p| name.starts_with(p))
                && !out.contains(&name.to_owned())
            {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// Whether `s` is a GUID (8-4-4-4-12 hex digits).
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_of_allowed() {
        assert_eq!(
            literals("@allowed([\n  'a'\n  'b-c'\n  512\n])"),
            ["a", "b-c", "512"]
        );
    }

    #[test]
    fn bounds_of_decorators() {
        let b = Bicep::parse(
            "b",
            "@minValue(40)\n@maxValue(1000)\nparam n int = 40\n@minLength(3)\n@maxLength(11)\nparam s string\nparam u int\n".into(),
        )
        .unwrap();
        let p = b.params();
        assert_eq!((p["n"].min_value, p["n"].max_value), (Some(40), Some(1000)));
        assert_eq!((p["s"].min_length, p["s"].max_length), (Some(3), Some(11)));
        assert_eq!(p["u"].min_value, None);
        assert_eq!(decorator_int("@minValue( -1 )", "minValue"), Some(-1));
    }

    #[test]
    fn outputs_and_modules() {
        let b = Bicep::parse(
            "b",
            "module m 'x.bicep' = {\n  name: 'm'\n  params: {\n    a: site.identity.principalId\n  }\n}\noutput o string = r.?identity.?principalId ?? ''\n".into(),
        )
        .unwrap();
        assert_eq!(b.outputs()["o"], "r.?identity.?principalId ?? ''");
        let m = b.modules();
        assert_eq!(m[0].1, "x.bicep");
        assert_eq!(m[0].2["a"], "site.identity.principalId");
    }

    #[test]
    fn setting_names_from_rust_and_markdown() {
        let names = setting_names(
            r#"get("CRDB_DELTA_SOURCE") | `CRDB_DELTA_QUEUE_CONNECTION__queueServiceUri=https://x` | "other" | `AzureWebJobs.<FunctionName>.Disabled`"#,
        );
        assert_eq!(
            names,
            [
                "CRDB_DELTA_SOURCE",
                "CRDB_DELTA_QUEUE_CONNECTION__queueServiceUri"
            ]
        );
    }

    #[test]
    fn guid() {
        assert!(is_guid("ba92f5b4-2d11-453d-a403-e96b0029c9fe"));
        assert!(!is_guid("ba92f5b4-2d11-453d-a403-e96b0029c9f"));
        assert!(!is_guid("zz92f5b4-2d11-453d-a403-e96b0029c9fe"));
    }
}
