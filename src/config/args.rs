//! `vswitch ctl add-port NAME key=value...`: the arguments as a `[[port]]` table.

use toml::{Table, Value};

/// The table the arguments describe: `name` is NAME, each `key=value` a key.
pub(crate) fn table(name: &str, args: &[&str]) -> Result<Table, String> {
    let mut t = Table::new();
    t.insert("name".into(), Value::String(name.into()));
    for arg in args {
        let Some((key, text)) = arg.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(format!("argument {arg:?}: expected key=value"));
        };
        if key == "name" {
            return Err(format!(
                "key 'name' = {text:?}: the port's name is the command's first argument ({name:?})"
            ));
        }
        if t.insert(key.into(), value(text)).is_some() {
            return Err(format!("key '{key}' is given twice"));
        }
    }
    Ok(t)
}

/// `text` as a TOML value when it is one (`2`, `[10, 20]`, `0o660`, `"x"`), else as a
/// string (`client`, `/tmp/x.sock`).
pub(crate) fn value(text: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {text}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.into()))
}
