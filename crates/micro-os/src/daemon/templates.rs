//! Templates: built-in ones compiled into the binary, user ones from
//! `$MICRO_OS_HOME/templates/*.json` (a user template of the same name wins).

use std::path::Path;

use micro_os_core::Template;

/// Built-in templates, as JSON so they read like the user's own files.
const BUILT_IN: &[&str] = &[r#"{
    "name": "busybox-httpd",
    "description": "A static web server (busybox httpd) on port 80 with an HTTP health check",
    "workload": "general",
    "image": "busybox",
    "command": ["sh", "-c", "mkdir -p /var/www && echo ok > /var/www/index.html && exec httpd -f -p 80 -h /var/www"],
    "resources": {"cpu": 0.5, "memory": "32M", "pids": 64},
    "health_check": {"type": "http", "port": 80, "path": "/", "interval_s": 2, "timeout_s": 1, "retries": 3},
    "restart": "on-failure:5"
}"#];

pub fn built_in() -> Vec<Template> {
    BUILT_IN
        .iter()
        .map(|j| {
            let mut t: Template = serde_json::from_str(j).expect("built-in templates are valid");
            t.source = "built-in".into();
            t
        })
        .collect()
}

/// All templates; user files that do not parse are reported in the second list.
pub fn all(dir: &Path) -> (Vec<Template>, Vec<String>) {
    let mut out = built_in();
    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect())
        .unwrap_or_default();
    files.sort();
    for path in files {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Template>(&t).map_err(|e| e.to_string()))
            .and_then(|t| t.validate().map(|_| t).map_err(|e| e.to_string()));
        match parsed {
            Ok(mut t) => {
                t.source = path.display().to_string();
                out.retain(|o| o.name != t.name);
                out.push(t);
            }
            Err(e) => problems.push(format!("template {} is not valid: {e}", path.display())),
        }
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_valid() {
        for t in built_in() {
            t.validate().unwrap();
        }
    }

    #[test]
    fn user_templates_override_and_bad_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"name":"busybox-httpd","image":"mine"}"#).unwrap();
        std::fs::write(dir.path().join("b.json"), r#"{"name":"x"}"#).unwrap();
        let (all, problems) = all(dir.path());
        let httpd = all.iter().find(|t| t.name == "busybox-httpd").unwrap();
        assert_eq!(httpd.image, "mine");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("b.json"), "{problems:?}");
    }
}
