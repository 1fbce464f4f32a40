//! The templates agree with the handler, the function folders and the docs: app settings, the
//! functions subscriptions target, container/prefix names, and role definition ids.

use std::collections::{BTreeMap, BTreeSet};

use crdb_delta_infra_check::{
    Bicep, Param, RoleAssignment, files_with_ext, is_guid, read, repo_root, setting_names,
};

fn bicep(rel: &str) -> Bicep {
    Bicep::load(&repo_root().join(rel)).unwrap()
}

/// Built-in role GUIDs from https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
/// and .../built-in-roles/monitor; a template may use no other.
const BUILT_IN_ROLES: &[(&str, &str)] = &[
    (
        "Storage Blob Data Reader",
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    ),
    (
        "Storage Blob Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    ),
    (
        "Storage Blob Data Owner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    ),
    (
        "Storage Queue Data Reader",
        "19e7f393-937e-4f77-808e-94535e297925",
    ),
    (
        "Storage Queue Data Message Processor",
        "8a0f0c08-91a1-4084-bc3d-661d67233fed",
    ),
    (
        "Storage Queue Data Message Sender",
        "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
    ),
    (
        "Storage Queue Data Contributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    ),
    (
        "Storage Table Data Contributor",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    ),
    (
        "Monitoring Metrics Publisher",
        "3913510d-42f4-4e42-8a64-420c390055eb",
    ),
];

/// Names the handler or its docs mention that are deliberately not app settings of the Function
/// App, each with the reason (and, where it is set another way, how `set_otherwise` finds it).
const NOT_APP_SETTINGS: &[(&str, &str)] = &[
    (
        "FUNCTIONS_CUSTOMHANDLER_PORT",
        "set by the Functions host for the handler",
    ),
    (
        "FUNCTIONS_HTTPWORKER_PORT",
        "older name of the port, set by the host",
    ),
    ("WEBSITE_INSTANCE_ID", "set by the platform"),
    ("AZURE_STORAGE_USE_EMULATOR", "Azurite only"),
    ("AZURITE_BLOB_STORAGE_URL", "Azurite only"),
    (
        "AZURE_CLIENT_ID",
        "only for a user-assigned identity; the app uses its system-assigned one",
    ),
    (
        "CRDB_DELTA_FAULT",
        "crash-test hook of handler/engine/faults.rs, never set in Azure",
    ),
    (
        "FUNCTIONS_WORKER_RUNTIME",
        "Flex Consumption: functionAppConfig.runtime.name",
    ),
    (
        "AzureWebJobsStorage",
        "identity-based: AzureWebJobsStorage__accountName",
    ),
    (
        "CRDB_DELTA_QUEUE_CONNECTION",
        "identity-based: CRDB_DELTA_QUEUE_CONNECTION__queueServiceUri",
    ),
];

/// The names the handler reads: string literals in handler/serve/*.rs (and the port names in
/// handler/functions/host.rs), the `%SETTING%` and `connection` names of the function folders, and
/// the first column of the settings table in function_app/README.md.
fn handler_settings() -> BTreeSet<String> {
    let mut names = handler_source_settings();
    names.extend(readme_settings());
    names.extend(binding_settings());
    names
}

/// Setting names quoted in the handler's sources: handler/serve/*.rs and handler/functions/host.rs.
fn handler_source_settings() -> BTreeSet<String> {
    let root = repo_root();
    let mut names = BTreeSet::new();
    for f in files_with_ext(&root.join("handler/serve"), ".rs") {
        names.extend(setting_names(&read(&f).unwrap()));
    }
    names.extend(setting_names(
        &read(&root.join("handler/functions/host.rs")).unwrap(),
    ));
    names
}

/// The section of function_app/README.md below `## <title>`, up to the next `## `.
fn readme_section(title: &str) -> String {
    let readme = read(&repo_root().join("function_app/README.md")).unwrap();
    readme
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("function_app/README.md has no section {title}"))
        .to_owned()
}

/// The first column of each row of the Markdown tables in `text` that starts with a code span.
fn first_column(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| row.split('|').nth(1).unwrap_or_default().trim().to_owned())
        .collect()
}

/// The names in the first column of the settings table in function_app/README.md.
fn readme_settings() -> BTreeSet<String> {
    first_column(&readme_section("Settings"))
        .iter()
        .flat_map(|cell| setting_names(cell))
        .collect()
}

/// The `%SETTING%` and `connection` names of the function folders.
fn binding_settings() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, json) in function_jsons() {
        for b in json["bindings"].as_array().unwrap() {
            for (k, v) in b.as_object().unwrap() {
                let Some(v) = v.as_str() else { continue };
                if let Some(inner) = v.strip_prefix('%').and_then(|v| v.strip_suffix('%')) {
                    names.insert(inner.to_owned());
                }
                if k == "connection" {
                    names.insert(v.to_owned());
                }
            }
        }
        assert!(!name.is_empty());
    }
    names
}

fn function_jsons() -> BTreeMap<String, serde_json::Value> {
    let dir = repo_root().join("function_app");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let f = e.path().join("function.json");
        if f.is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            out.insert(name, serde_json::from_str(&read(&f).unwrap()).unwrap());
        }
    }
    out
}

/// Settings missing from `app_settings`, given what the handler reads.
fn missing_settings(
    handler: &BTreeSet<String>,
    app_settings: &[String],
    module: &str,
) -> Vec<String> {
    let excluded: BTreeMap<&str, &str> = NOT_APP_SETTINGS.iter().copied().collect();
    let mut missing = Vec::new();
    for name in handler {
        if app_settings.contains(name) {
            continue;
        }
        match excluded.get(name.as_str()) {
            Some(_) if set_otherwise(name, app_settings, module) => {}
            Some(_) => missing.push(format!("{name} (its replacement is missing)")),
            None => missing.push(name.clone()),
        }
    }
    missing
}

/// For the names set in another form, whether that form is there.
fn set_otherwise(name: &str, app_settings: &[String], module: &str) -> bool {
    match name {
        "FUNCTIONS_WORKER_RUNTIME" => module.contains("name: 'custom'"),
        "AzureWebJobsStorage" | "CRDB_DELTA_QUEUE_CONNECTION" => app_settings
            .iter()
            .any(|s| s.starts_with(&format!("{name}__"))),
        _ => true,
    }
}

#[test]
fn function_app_sets_every_setting_the_handler_reads() {
    let module = bicep("infra/modules/functionApp.bicep");
    let app_settings = module
        .object_keys_of_var("appSettings")
        .expect("var appSettings");
    let handler = handler_settings();
    for must in [
        "CRDB_DELTA_SOURCE",
        "CRDB_DELTA_TARGET",
        "CRDB_DELTA_QUEUE",
        "CRDB_DELTA_CATCHUP_SCHEDULE",
    ] {
        assert!(
            handler.contains(must),
            "{must} not found in the handler sources: {handler:?}"
        );
    }
    // The fan-out settings are read by the handler itself (the apply queue is also named by the
    // bindings, which alone would satisfy the list above).
    let source = handler_source_settings();
    for must in ["CRDB_DELTA_APPLY_QUEUE", "CRDB_DELTA_FAN_OUT"] {
        assert!(
            source.contains(must),
            "{must} not read in handler/serve/*.rs: {source:?}"
        );
    }
    let missing = missing_settings(&handler, &app_settings, &module.source);
    assert!(
        missing.is_empty(),
        "read by the handler but not set by functionApp.bicep: {missing:?}"
    );
    // And nothing the handler does not read (besides the host's own).
    let host_only = [
        "AzureWebJobsStorage__accountName",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
    ];
    let extra: Vec<&String> = app_settings
        .iter()
        .filter(|s| !handler.contains(*s) && !host_only.contains(&s.as_str()))
        .filter(|s| !handler.iter().any(|h| s.starts_with(&format!("{h}__"))))
        .collect();
    assert!(extra.is_empty(), "set but read by nobody: {extra:?}");
}

#[test]
fn a_missing_setting_is_detected() {
    let module = bicep("infra/modules/functionApp.bicep");
    let mut app_settings = module.object_keys_of_var("appSettings").unwrap();
    app_settings
        .retain(|s| s != "CRDB_DELTA_LEASE_SECONDS" && !s.starts_with("AzureWebJobsStorage"));
    let missing = missing_settings(&handler_settings(), &app_settings, &module.source);
    assert!(
        missing.contains(&"CRDB_DELTA_LEASE_SECONDS".to_owned()),
        "{missing:?}"
    );
    assert!(
        missing
            .iter()
            .any(|m| m.starts_with("AzureWebJobsStorage ")),
        "{missing:?}"
    );
    // A new setting in the handler that the template lacks is caught too.
    let mut handler = handler_settings();
    handler.insert("CRDB_DELTA_SOMETHING_NEW".into());
    let all = module.object_keys_of_var("appSettings").unwrap();
    assert_eq!(
        missing_settings(&handler, &all, &module.source),
        ["CRDB_DELTA_SOMETHING_NEW"]
    );
}

#[test]
fn subscriptions_target_existing_functions() {
    let functions = function_jsons();
    let mut targeted = Vec::new();
    for f in files_with_ext(&repo_root().join("infra"), ".bicep") {
        for s in Bicep::load(&f).unwrap().strings() {
            if let Some((_, name)) = s.split_once("/functions/") {
                targeted.push(name.to_owned());
            }
        }
    }
    assert_eq!(
        targeted,
        ["BlobCreated"],
        "functions targeted by Event Grid"
    );
    for name in &targeted {
        let json = functions
            .get(name)
            .unwrap_or_else(|| panic!("function_app/{name}/function.json missing"));
        assert_eq!(json["bindings"][0]["type"], "eventGridTrigger", "{name}");
    }
    // The queue route feeds the queue BlobQueue reads: %CRDB_DELTA_QUEUE% = the queueName param.
    assert_eq!(
        functions["BlobQueue"]["bindings"][0]["queueName"],
        "%CRDB_DELTA_QUEUE%"
    );
    let sub = bicep("infra/modules/eventSubscription.bicep");
    assert!(sub.source.contains("queueName: queueName"));
    assert!(
        bicep("infra/modules/functionApp.bicep")
            .source
            .contains("CRDB_DELTA_QUEUE: queueName")
    );
    // Detection: a target without a function folder is refused.
    assert!(!functions.contains_key("BlobCreatedTypo"));
}

/// The functions that can receive a RESOLVED and answer with one apply message per table.
const FAN_OUT_FUNCTIONS: &[&str] = &["BlobCreated", "BlobQueue", "CatchUp"];

/// The `tables` output binding the handler fills with one message per table, and ApplyTable's
/// trigger on the same queue; both through the identity-based connection of BlobQueue.
fn apply_bindings() -> (serde_json::Value, serde_json::Value) {
    let output = serde_json::json!({
        "type": "queue",
        "direction": "out",
        "name": "tables",
        "queueName": "%CRDB_DELTA_APPLY_QUEUE%",
        "connection": "CRDB_DELTA_QUEUE_CONNECTION",
    });
    let trigger = serde_json::json!({
        "type": "queueTrigger",
        "direction": "in",
        "name": "message",
        "queueName": "%CRDB_DELTA_APPLY_QUEUE%",
        "connection": "CRDB_DELTA_QUEUE_CONNECTION",
    });
    (output, trigger)
}

/// What is wrong with the fan-out in the function folders: ApplyTable's trigger, the `tables`
/// output of each RESOLVED-receiving function (and of no other), one connection for every queue
/// binding, unique binding names.
fn fan_out_binding_problems(functions: &BTreeMap<String, serde_json::Value>) -> Vec<String> {
    let (output, trigger) = apply_bindings();
    let mut out = Vec::new();
    match functions.get("ApplyTable") {
        Some(json) if json["bindings"] == serde_json::json!([trigger]) => {}
        Some(json) => out.push(format!("ApplyTable bindings {}", json["bindings"])),
        None => out.push("function_app/ApplyTable/function.json missing".into()),
    }
    for (name, json) in functions {
        let bindings = json["bindings"].as_array().cloned().unwrap_or_default();
        let tables: Vec<&serde_json::Value> =
            bindings.iter().filter(|b| b["name"] == "tables").collect();
        let wanted = FAN_OUT_FUNCTIONS.contains(&name.as_str());
        match (wanted, tables.as_slice()) {
            (true, [b]) if **b == output => {}
            (false, []) => {}
            (_, found) => out.push(format!("{name}: `tables` bindings {found:?}")),
        }
        let mut seen = BTreeSet::new();
        for b in &bindings {
            if !seen.insert(b["name"].as_str().unwrap_or_default()) {
                out.push(format!("{name}: binding name {} twice", b["name"]));
            }
            let queue = b["type"] == "queue" || b["type"] == "queueTrigger";
            if queue && b["connection"] != "CRDB_DELTA_QUEUE_CONNECTION" {
                out.push(format!(
                    "{name}: queue binding connection {}",
                    b["connection"]
                ));
            }
        }
    }
    out
}

/// What is wrong with the fan-out in the templates: the two parameters of main.bicep handed to
/// the modules, the two app settings, the apply queue created and the app's three roles on it.
fn fan_out_template_problems(
    main: &Bicep,
    app: &Bicep,
    storage: &Bicep,
    roles: &Bicep,
) -> Vec<String> {
    let mut out = Vec::new();
    let params = main.params();
    let param = |name: &str| {
        params
            .get(name)
            .map(|p| (p.type_name.as_str(), p.default.as_deref()))
    };
    if param("applyQueueName") != Some(("string", Some("'crdb-delta-tables'"))) {
        out.push(format!(
            "main.bicep: applyQueueName {:?}",
            param("applyQueueName")
        ));
    }
    if param("fanOut") != Some(("bool", Some("false"))) {
        out.push(format!("main.bicep: fanOut {:?}", param("fanOut")));
    }
    let modules = main.modules();
    for (path, key) in [
        ("modules/storage.bicep", "applyQueueName"),
        ("modules/roles.bicep", "applyQueueName"),
        ("modules/functionApp.bicep", "applyQueueName"),
        ("modules/functionApp.bicep", "fanOut"),
    ] {
        let given = modules
            .iter()
            .find(|(_, p, _)| p == path)
            .and_then(|(_, _, params)| params.get(key));
        if given.map(String::as_str) != Some(key) {
            out.push(format!("main.bicep: {path} gets {key} = {given:?}"));
        }
    }
    let app_params = app.params();
    for (name, ty) in [("applyQueueName", "string"), ("fanOut", "bool")] {
        if app_params.get(name).map(|p| p.type_name.as_str()) != Some(ty) {
            out.push(format!("{}: no {ty} param {name}", app.name));
        }
    }
    // 'true'/'false' as the handler reads them, not string(fanOut).
    for setting in [
        "CRDB_DELTA_APPLY_QUEUE: applyQueueName",
        "CRDB_DELTA_FAN_OUT: fanOut ? 'true' : 'false'",
    ] {
        if !app.source.contains(setting) {
            out.push(format!("{}: no `{setting}`", app.name));
        }
    }
    let creates = storage
        .resource_names()
        .into_iter()
        .any(|(_, ty, name)| ty.starts_with(QUEUES) && name == "applyQueueName");
    if !creates {
        out.push(format!("{}: no queue named applyQueueName", storage.name));
    }
    let symbol = roles
        .resource_names()
        .into_iter()
        .find(|(_, ty, name)| ty.starts_with(QUEUES) && name == "applyQueueName")
        .map(|(symbol, _, _)| symbol);
    let Some(symbol) = symbol else {
        out.push(format!(
            "{}: no existing queue named applyQueueName",
            roles.name
        ));
        return out;
    };
    let assignments = roles.role_assignments();
    for role in [
        "storageQueueDataReader",
        "storageQueueDataMessageProcessor",
        "storageQueueDataMessageSender",
    ] {
        let found = assignments.iter().any(|a| {
            a.scope == symbol
                && a.role == format!("roles.{role}")
                && a.principal == "functionPrincipalId"
        });
        if !found {
            out.push(format!("{}: the app has no {role} on {symbol}", roles.name));
        }
    }
    out
}

#[test]
fn fan_out_queue_is_wired() {
    let functions = function_jsons();
    let problems = fan_out_binding_problems(&functions);
    assert!(problems.is_empty(), "{problems:?}");
    let main = bicep("infra/main.bicep");
    let app = bicep("infra/modules/functionApp.bicep");
    let storage = bicep("infra/modules/storage.bicep");
    let roles = bicep("infra/modules/roles.bicep");
    let problems = fan_out_template_problems(&main, &app, &storage, &roles);
    assert!(problems.is_empty(), "{problems:?}");
    // Both settings are in the README's settings table and set by functionApp.bicep.
    let documented = readme_settings();
    let set = app.object_keys_of_var("appSettings").unwrap();
    for name in ["CRDB_DELTA_APPLY_QUEUE", "CRDB_DELTA_FAN_OUT"] {
        assert!(
            documented.contains(name),
            "{name} not in the README settings table"
        );
        assert!(set.iter().any(|s| s == name), "{name} not in appSettings");
    }

    // Detection: CatchUp without its output, ApplyTable on the blob queue, a second `tables`.
    let mut broken = functions.clone();
    broken.get_mut("CatchUp").unwrap()["bindings"]
        .as_array_mut()
        .unwrap()
        .retain(|b| b["name"] != "tables");
    broken.get_mut("ApplyTable").unwrap()["bindings"][0]["queueName"] = "%CRDB_DELTA_QUEUE%".into();
    let (output, _) = apply_bindings();
    broken.get_mut("Status").unwrap()["bindings"]
        .as_array_mut()
        .unwrap()
        .push(output);
    let problems = fan_out_binding_problems(&broken);
    assert_eq!(problems.len(), 3, "{problems:?}");
    // The app setting naming the blob queue; no Message Sender on the apply queue.
    let wrong_setting = Bicep::parse(
        "functionApp",
        app.source.replace(
            "CRDB_DELTA_APPLY_QUEUE: applyQueueName",
            "CRDB_DELTA_APPLY_QUEUE: queueName",
        ),
    )
    .unwrap();
    let sender = "scope: applyQueue\n  name: guid(applyQueue.id, functionPrincipalId, roles.storageQueueDataMessageSender)";
    assert!(roles.source.contains(sender));
    let no_sender = Bicep::parse(
        "roles",
        roles.source.replace(
            sender,
            "scope: queue\n  name: guid(queue.id, functionPrincipalId, roles.storageQueueDataMessageSender)",
        ),
    )
    .unwrap();
    let problems = fan_out_template_problems(&main, &wrong_setting, &storage, &no_sender);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn every_function_folder_has_a_readme_row() {
    // The function table comes before the first section.
    let readme = read(&repo_root().join("function_app/README.md")).unwrap();
    let intro = readme.split("\n## ").next().unwrap_or_default();
    let rows: BTreeSet<String> = first_column(intro)
        .iter()
        .map(|c| c.trim_matches('`').to_owned())
        .collect();
    let folders: BTreeSet<String> = function_jsons().into_keys().collect();
    assert!(folders.contains("ApplyTable"), "{folders:?}");
    assert_eq!(rows, folders, "function table of function_app/README.md");
    // And every name the bindings resolve is in its settings table.
    let documented = readme_settings();
    let missing: Vec<String> = binding_settings()
        .into_iter()
        .filter(|n| !documented.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the README settings table: {missing:?}"
    );
}

fn default_of(b: &Bicep, param: &str) -> String {
    b.params()[param]
        .default
        .clone()
        .unwrap()
        .trim_matches('\'')
        .to_owned()
}

#[test]
fn container_and_prefix_names_agree() {
    let root = repo_root();
    let main = bicep("infra/main.bicep");
    let changefeed = default_of(&main, "changefeedContainer");
    let prefix = default_of(&main, "changefeedPrefix");
    let target = default_of(&main, "targetContainer");
    let target_prefix = default_of(&main, "targetPrefix");
    let queue = default_of(&main, "queueName");
    let apply_queue = default_of(&main, "applyQueueName");

    // Parameter files: only declared params, allowed values, the same names as the defaults.
    let params = main.params();
    for (file, json) in parameter_files(&root) {
        for (k, v) in json["parameters"].as_object().unwrap() {
            let p = params
                .get(k)
                .unwrap_or_else(|| panic!("{file}: {k} is not a parameter of main.bicep"));
            let value = &v["value"];
            let text = value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            assert!(
                p.allowed.is_empty() || p.allowed.contains(&text),
                "{file}: {k}={text} not in {:?}",
                p.allowed
            );
        }
        for (k, want) in [
            ("changefeedContainer", &changefeed),
            ("changefeedPrefix", &prefix),
            ("targetContainer", &target),
            ("targetPrefix", &target_prefix),
            ("queueName", &queue),
            ("applyQueueName", &apply_queue),
        ] {
            if let Some(v) = json["parameters"][k]["value"].as_str() {
                assert_eq!(v, want, "{file}: {k}");
            }
        }
        for (name, p) in &params {
            assert!(
                p.default.is_some() || json["parameters"].get(name).is_some(),
                "{file}: required {name} missing"
            );
        }
    }

    // Handler config used locally: the same containers and queue.
    let local: serde_json::Value =
        serde_json::from_str(&read(&root.join("local.settings.json.example")).unwrap()).unwrap();
    let v = &local["Values"];
    assert!(
        v["CRDB_DELTA_SOURCE"]
            .as_str()
            .unwrap()
            .starts_with(&format!("azure://{changefeed}/"))
    );
    assert!(
        v["CRDB_DELTA_TARGET"]
            .as_str()
            .unwrap()
            .starts_with(&format!("azure://{target}/"))
    );
    assert_eq!(v["CRDB_DELTA_QUEUE"], queue.as_str());

    // Docs: every sink URI names the changefeed container and prefix; every abfss URL one of the
    // two containers (the target with its prefix).
    let docs = read(&root.join("docs/deploy.md")).unwrap();
    let problems = doc_name_problems(&docs, &changefeed, &prefix, &target, &target_prefix);
    assert!(problems.is_empty(), "docs/deploy.md: {problems:?}");
    assert!(
        docs.contains(&format!("azure-blob://{changefeed}/{prefix}")),
        "no sink URI in docs/deploy.md"
    );
    for q in [&queue, &apply_queue] {
        for name in [format!("`{q}`"), format!("`{q}-poison`")] {
            assert!(docs.contains(&name), "docs/deploy.md does not name {name}");
        }
    }
    // Detection: a URI with another container is reported.
    let bad = docs.replacen(
        &format!("azure-blob://{changefeed}/"),
        "azure-blob://feed/",
        1,
    );
    assert!(!doc_name_problems(&bad, &changefeed, &prefix, &target, &target_prefix).is_empty());
}

fn doc_name_problems(
    docs: &str,
    changefeed: &str,
    prefix: &str,
    target: &str,
    target_prefix: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for scheme in ["azure-blob://", "azure://"] {
        for piece in docs.split(scheme).skip(1) {
            let uri: String = piece
                .chars()
                .take_while(|c| !c.is_whitespace() && !"'\"`)?".contains(*c))
                .collect();
            // An empty URI is the scheme named in prose.
            if !uri.is_empty() && !uri.starts_with(&format!("{changefeed}/{prefix}")) {
                out.push(format!("{scheme}{uri}"));
            }
        }
    }
    for piece in docs.split("abfss://").skip(1) {
        let uri: String = piece
            .chars()
            .take_while(|c| !c.is_whitespace() && !"'\"`)".contains(*c))
            .collect();
        let container = uri.split('@').next().unwrap_or_default();
        let path = uri.split_once(".net/").map(|(_, p)| p).unwrap_or_default();
        let ok = (container == changefeed && (path.is_empty() || path.starts_with(prefix)))
            || (container == target && (path.starts_with(target_prefix) || uri.ends_with(".net")))
            || container.contains('<')
            || container.contains('…')
            || container == "...";
        if !ok {
            out.push(format!("abfss://{uri}"));
        }
    }
    out
}

#[test]
fn role_definition_ids_are_documented_built_ins() {
    let table: BTreeMap<&str, &str> = BUILT_IN_ROLES.iter().map(|(n, g)| (*g, *n)).collect();
    let mut used = 0;
    for f in files_with_ext(&repo_root().join("infra"), ".bicep") {
        for s in Bicep::load(&f).unwrap().strings() {
            if is_guid(&s) {
                assert!(
                    table.contains_key(s.as_str()),
                    "{}: {s} is not a documented built-in role id",
                    f.display()
                );
                used += 1;
            }
        }
    }
    assert!(used >= 6, "expected the role table, found {used} GUIDs");
    // The names in the role tables (`var roles`) match the ids they hold.
    let mut roles = BTreeMap::new();
    for f in files_with_ext(&repo_root().join("infra"), ".bicep") {
        roles.extend(Bicep::load(&f).unwrap().string_map_of_var("roles"));
    }
    assert!(roles.len() >= 6, "{roles:?}");
    for (key, guid) in &roles {
        let name = table[guid.as_str()].replace(' ', "").to_lowercase();
        assert_eq!(
            key.to_lowercase(),
            name,
            "roles.{key} holds the id of {}",
            table[guid.as_str()]
        );
    }
    // Detection: a made-up id is not in the table.
    assert!(!table.contains_key("ba92f5b4-2d11-453d-a403-e96b0029c9ff"));
}

#[test]
fn role_assignments_are_least_privilege() {
    let assignments = bicep("infra/modules/roles.bicep").role_assignments();
    let has = |scope: &str, role: &str, principal: &str| {
        assignments.iter().any(|a| {
            a.scope == scope && a.role == format!("roles.{role}") && a.principal == principal
        })
    };
    assert!(
        has("changefeed", "storageBlobDataReader", "functionPrincipalId"),
        "{assignments:#?}"
    );
    assert!(has(
        "target",
        "storageBlobDataContributor",
        "functionPrincipalId"
    ));
    assert!(has(
        "queue",
        "storageQueueDataMessageProcessor",
        "functionPrincipalId"
    ));
    assert!(has(
        "queue",
        "storageQueueDataReader",
        "functionPrincipalId"
    ));
    assert!(has(
        "target",
        "storageBlobDataContributor",
        "accessConnectorPrincipalId"
    ));
    assert!(has(
        "queue",
        "storageQueueDataMessageSender",
        "topicPrincipalId"
    ));
    // The fan-out queue: ApplyTable's trigger reads it, the `tables` output bindings add to it.
    for role in [
        "storageQueueDataReader",
        "storageQueueDataMessageProcessor",
        "storageQueueDataMessageSender",
    ] {
        assert!(has("applyQueue", role, "functionPrincipalId"), "{role}");
    }
    // The function never writes the changefeed, and no data role is account-wide.
    for a in &assignments {
        assert!(
            !(a.scope == "changefeed"
                && a.principal == "functionPrincipalId"
                && a.role != "roles.storageBlobDataReader"),
            "{a:?}"
        );
        assert!(
            [
                "changefeed",
                "target",
                "queue",
                "poisonQueue",
                "applyQueue",
                "applyPoisonQueue",
                "deadLetter"
            ]
            .contains(&a.scope.as_str()),
            "{a:?} is not scoped to a container or queue"
        );
    }
    // The host's roles are on its own account only (hostStorageRoles.bicep, whose account is
    // the one functionApp.bicep creates).
    assert!(
        bicep("infra/modules/functionApp.bicep")
            .role_assignments()
            .is_empty()
    );
    let host = bicep("infra/modules/hostStorageRoles.bicep").role_assignments();
    assert_eq!(host.len(), 2, "{host:#?}");
    assert!(host.iter().all(|a| a.scope == "hostStorage"), "{host:#?}");
}

#[test]
fn subscription_filters_and_two_phase_flag() {
    let sub = bicep("infra/modules/eventSubscription.bicep");
    let strings = sub.strings();
    for want in [
        "Microsoft.Storage.BlobCreated",
        "data.api",
        "PutBlob",
        "PutBlockList",
        "FlushWithClose",
        // The handler's completing APIs (handler/functions/events.rs COMPLETING_APIS) include SFTP's.
        "SftpCommit",
        "StringIn",
        "StorageQueue",
        "AzureFunction",
        "StorageBlob",
    ] {
        assert!(
            strings.iter().any(|s| s == want),
            "eventSubscription.bicep lacks '{want}'"
        );
    }
    assert!(
        strings.iter().any(
            |s| s.starts_with("/blobServices/default/containers/${changefeedContainer}/blobs/")
        )
    );
    let main = bicep("infra/main.bicep");
    let params = main.params();
    assert_eq!(
        params["deployEventSubscription"].default.as_deref(),
        Some("false")
    );
    assert_eq!(
        params["deliveryRoute"].allowed,
        ["azureFunction", "storageQueue"]
    );
    assert!(main.source.contains("= if (deployEventSubscription)"));
}

const QUEUES: &str = "Microsoft.Storage/storageAccounts/queueServices/queues@";

/// The poison queue name the queue extension uses for a queue name expression (`'${q}-poison'`
/// for a parameter, `'x-poison'` for a literal).
fn poison_name(queue: &str) -> String {
    match queue.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')) {
        Some(literal) => format!("'{literal}-poison'"),
        None => format!("'${{{queue}}}-poison'"),
    }
}

/// Why failed messages could not move to `<queue>-poison`: a queue created without its poison
/// queue next to it, or a poison queue the Function App cannot send to.
fn poison_queue_problems(storage: &Bicep, roles: &Bicep) -> Vec<String> {
    let mut out = Vec::new();
    let created = storage.resource_names();
    let queues: Vec<&String> = created
        .iter()
        .filter(|(_, ty, _)| ty.starts_with(QUEUES))
        .map(|(_, _, name)| name)
        .collect();
    let plain: Vec<&&String> = queues.iter().filter(|n| !n.ends_with("-poison'")).collect();
    if plain.is_empty() {
        out.push(format!("{}: no queue", storage.name));
    }
    for q in plain {
        let poison = poison_name(q);
        if !queues.iter().any(|n| **n == poison) {
            out.push(format!("{}: {q} has no {poison} next to it", storage.name));
        }
        // roles.bicep refers to it as an existing queue and gives the app Message Sender on it.
        let symbol = roles
            .resource_names()
            .into_iter()
            .find(|(_, ty, name)| ty.starts_with(QUEUES) && *name == poison)
            .map(|(symbol, _, _)| symbol);
        let Some(symbol) = symbol else {
            out.push(format!("{}: no existing {poison}", roles.name));
            continue;
        };
        let sends = roles.role_assignments().iter().any(|a: &RoleAssignment| {
            a.scope == symbol
                && a.role == "roles.storageQueueDataMessageSender"
                && a.principal == "functionPrincipalId"
        });
        if !sends {
            out.push(format!(
                "{}: the app has no Storage Queue Data Message Sender on {symbol}",
                roles.name
            ));
        }
    }
    let sender = roles.string_map_of_var("roles");
    if sender
        .get("storageQueueDataMessageSender")
        .map(String::as_str)
        != Some("c6a89b2d-59bc-44d0-9896-0f6e12d7b80a")
    {
        out.push(format!("{}: wrong Message Sender role id", roles.name));
    }
    out
}

#[test]
fn poison_queue_exists_and_the_app_can_send_to_it() {
    let storage = bicep("infra/modules/storage.bicep");
    let roles = bicep("infra/modules/roles.bicep");
    let problems = poison_queue_problems(&storage, &roles);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(poison_name("queueName"), "'${queueName}-poison'");
    assert_eq!(poison_name("'jobs'"), "'jobs-poison'");
    // Detection: no poison queue in storage.bicep; no Sender role on it in roles.bicep.
    let no_queue = Bicep::parse(
        "storage",
        storage
            .source
            .replace("'${queueName}-poison'", "'${queueName}-other'"),
    )
    .unwrap();
    let problems = poison_queue_problems(&no_queue, &roles);
    assert!(
        problems.iter().any(|p| p.contains("has no")),
        "{problems:?}"
    );
    // The apply queue's poison queue is checked the same way.
    let no_apply_poison = Bicep::parse(
        "storage",
        storage
            .source
            .replace("'${applyQueueName}-poison'", "'${applyQueueName}-other'"),
    )
    .unwrap();
    let problems = poison_queue_problems(&no_apply_poison, &roles);
    assert!(
        problems.iter().any(|p| p.contains("applyQueueName")),
        "{problems:?}"
    );
    let no_sender = Bicep::parse(
        "roles",
        roles.source.replace("scope: poisonQueue", "scope: queue"),
    )
    .unwrap();
    let problems = poison_queue_problems(&storage, &no_sender);
    assert!(
        problems.iter().any(|p| p.contains("Message Sender")),
        "{problems:?}"
    );
}

/// Flex Consumption's lowest maximum instance count accepted in every region, and its highest.
const MIN_INSTANCES: i64 = 40;
const MAX_INSTANCES: i64 = 1000;

/// `maximumInstanceCount` values of a parameter file outside 40..=1000.
fn instance_count_problems(file: &str, json: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v) = json["parameters"].get("maximumInstanceCount") {
        match v["value"].as_i64() {
            Some(n) if (MIN_INSTANCES..=MAX_INSTANCES).contains(&n) => {}
            _ => out.push(format!("{file}: maximumInstanceCount {}", v["value"])),
        }
    }
    out
}

/// The deployment parameter files, parsed.
fn parameter_files(root: &std::path::Path) -> Vec<(&'static str, serde_json::Value)> {
    [
        "infra/main.dev.parameters.json",
        "infra/main.prod.parameters.json",
    ]
    .into_iter()
    .map(|file| {
        let text = read(&root.join(file)).unwrap();
        (file, serde_json::from_str(&text).unwrap())
    })
    .collect()
}

#[test]
fn maximum_instance_count_is_at_least_40() {
    let root = repo_root();
    for (file, json) in parameter_files(&root) {
        let problems = instance_count_problems(file, &json);
        assert!(problems.is_empty(), "{problems:?}");
    }
    // The templates refuse anything lower themselves.
    for file in ["infra/main.bicep", "infra/modules/functionApp.bicep"] {
        let p = &bicep(file).params()["maximumInstanceCount"];
        assert_eq!(
            (p.min_value, p.max_value),
            (Some(MIN_INSTANCES), Some(MAX_INSTANCES)),
            "{file}"
        );
        let default: i64 = p.default.as_deref().unwrap().parse().unwrap();
        assert!(default >= MIN_INSTANCES, "{file}: default {default}");
    }
    // Detection: 10 is refused.
    let bad = serde_json::json!({ "parameters": { "maximumInstanceCount": { "value": 10 } } });
    assert_eq!(instance_count_problems("bad", &bad).len(), 1);
}

/// Parameters that must carry bounds: (file, parameter, `@minValue`/`@minLength`,
/// `@maxValue`/`@maxLength`). Event Grid accepts 1-30 delivery attempts and a TTL of 1-1440
/// minutes; `namePrefix` ends up in storage account names (24 characters with a 13-character
/// suffix); a queue name has 3-63 characters, less `-poison`.
const BOUNDED: &[(&str, &str, i64, i64)] = &[
    ("infra/main.bicep", "namePrefix", 3, 11),
    ("infra/main.bicep", "queueName", 3, 56),
    ("infra/modules/storage.bicep", "queueName", 3, 56),
    ("infra/main.bicep", "applyQueueName", 3, 56),
    ("infra/modules/storage.bicep", "applyQueueName", 3, 56),
    ("infra/main.bicep", "maxDeliveryAttempts", 1, 30),
    ("infra/main.bicep", "eventTimeToLiveInMinutes", 1, 1440),
    (
        "infra/modules/eventSubscription.bicep",
        "maxDeliveryAttempts",
        1,
        30,
    ),
    (
        "infra/modules/eventSubscription.bicep",
        "eventTimeToLiveInMinutes",
        1,
        1440,
    ),
];

/// A parameter's bounds as the template declares them: value bounds for `int`, length bounds
/// otherwise.
fn bounds(p: &Param) -> (Option<i64>, Option<i64>) {
    if p.type_name == "int" {
        (p.min_value, p.max_value)
    } else {
        (p.min_length, p.max_length)
    }
}

/// Whether `value` (a default's source text or a parameter file value) is within `p`'s bounds.
fn within_bounds(p: &Param, value: &serde_json::Value) -> bool {
    let n = if p.type_name == "int" {
        value.as_i64()
    } else {
        value.as_str().map(|s| s.chars().count() as i64)
    };
    let (lo, hi) = bounds(p);
    match n {
        Some(n) => lo.is_none_or(|lo| n >= lo) && hi.is_none_or(|hi| n <= hi),
        None => true,
    }
}

fn bound_problems(file: &str, b: &Bicep) -> Vec<String> {
    let params = b.params();
    let mut out = Vec::new();
    for (f, name, lo, hi) in BOUNDED.iter().filter(|(f, ..)| *f == file) {
        match params.get(*name) {
            Some(p) if bounds(p) == (Some(*lo), Some(*hi)) => {}
            Some(p) => out.push(format!("{f}: {name} bounds {:?}", bounds(p))),
            None => out.push(format!("{f}: no {name}")),
        }
    }
    out
}

#[test]
fn names_and_retry_parameters_are_bounded() {
    let files: BTreeSet<&str> = BOUNDED.iter().map(|(f, ..)| *f).collect();
    for file in &files {
        let problems = bound_problems(file, &bicep(file));
        assert!(problems.is_empty(), "{problems:?}");
    }
    // Defaults and parameter file values lie within every declared bound.
    let root = repo_root();
    let main = bicep("infra/main.bicep").params();
    for (name, p) in &main {
        let Some(default) = p.default.as_deref() else {
            continue;
        };
        let value = match default.parse::<i64>() {
            Ok(n) => serde_json::json!(n),
            Err(_) if default.starts_with('\'') && !default.contains("${") => {
                serde_json::json!(default.trim_matches('\''))
            }
            Err(_) => continue,
        };
        assert!(
            within_bounds(p, &value),
            "main.bicep: {name} default {default}"
        );
    }
    for (file, json) in parameter_files(&root) {
        for (k, v) in json["parameters"].as_object().unwrap() {
            assert!(within_bounds(&main[k], &v["value"]), "{file}: {k}");
        }
    }
    // Detection: a retry parameter without its decorators, a value out of bounds.
    let src = bicep("infra/modules/eventSubscription.bicep")
        .source
        .replace("@maxValue(30)\n", "");
    let broken = Bicep::parse("eventSubscription", src).unwrap();
    let problems = bound_problems("infra/modules/eventSubscription.bicep", &broken);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(!within_bounds(
        &main["maxDeliveryAttempts"],
        &serde_json::json!(31)
    ));
    assert!(!within_bounds(
        &main["namePrefix"],
        &serde_json::json!("crdbdeltaprod")
    ));
}

/// Role assignments whose name is not `guid(<scope>.id, <principal>, <role>)` with the principal
/// a parameter of the file: a name keyed by a resource id (`site.id`) maps a re-created app to
/// the old assignment, which ARM refuses to give a new principal; a runtime value such as
/// `site.identity.principalId` is not allowed in a name (BCP120).
fn role_name_problems(b: &Bicep) -> Vec<String> {
    let params = b.params();
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    let mut out = Vec::new();
    for a in b.role_assignments() {
        let want = format!("guid({}.id,{},{})", a.scope, a.principal, a.role);
        if squash(&a.name) != want {
            out.push(format!("{}: {} is named {}", b.name, a.symbol, a.name));
        }
        if !params.contains_key(&a.principal) {
            out.push(format!(
                "{}: {} principal {} is not a parameter",
                b.name, a.symbol, a.principal
            ));
        }
    }
    out
}

#[test]
fn role_assignment_names_are_keyed_by_principal_id() {
    let mut count = 0;
    for f in files_with_ext(&repo_root().join("infra"), ".bicep") {
        let b = Bicep::load(&f).unwrap();
        count += b.role_assignments().len();
        let problems = role_name_problems(&b);
        assert!(problems.is_empty(), "{problems:?}");
    }
    assert!(count >= 10, "expected the role assignments, found {count}");
    // Detection: the old host-storage assignment, keyed by the site's resource id.
    let old = "var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
resource hostStorageOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: hostStorage
  name: guid(hostStorage.id, site.id, storageBlobDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: site.identity.principalId
    principalType: 'ServicePrincipal'
  }
}
";
    let problems = role_name_problems(&Bicep::parse("old", old.into()).unwrap());
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn host_storage_has_blob_owner_and_table_contributor() {
    let b = bicep("infra/modules/hostStorageRoles.bicep");
    let roles = b.string_map_of_var("roles");
    let problems = host_role_problems(&b);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        roles["storageTableDataContributor"],
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
    );
    assert_eq!(
        roles["storageBlobDataOwner"],
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
    );
    // functionApp.bicep hands the module its own host account and the app's principal id.
    let app = bicep("infra/modules/functionApp.bicep");
    let modules = app.modules();
    let (_, _, params) = modules
        .iter()
        .find(|(_, path, _)| path == "hostStorageRoles.bicep")
        .expect("functionApp.bicep uses hostStorageRoles.bicep");
    assert_eq!(params["hostStorageAccountName"], "hostStorage.name");
    assert_eq!(params["principalId"], "site.identity.principalId");
    // Detection: without the table role.
    let src = b.source.replace(
        "roles.storageTableDataContributor)",
        "roles.storageBlobDataOwner)",
    );
    let problems = host_role_problems(&Bicep::parse("broken", src).unwrap());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("storageTableDataContributor")),
        "{problems:?}"
    );
}

/// The host storage roles the Functions host needs with identity-based AzureWebJobsStorage.
fn host_role_problems(b: &Bicep) -> Vec<String> {
    let assignments = b.role_assignments();
    let mut out = Vec::new();
    for role in ["storageBlobDataOwner", "storageTableDataContributor"] {
        let found = assignments.iter().any(|a| {
            a.scope == "hostStorage"
                && a.role == format!("roles.{role}")
                && a.principal == "principalId"
        });
        if !found {
            out.push(format!("{}: no {role} on hostStorage", b.name));
        }
    }
    out
}

/// Why the `principalId` output of eventGridTopic.bicep would fail for a reused system topic
/// without an identity: the `existing` topic's identity must be read with `.?` and defaulted.
fn topic_identity_problems(b: &Bicep) -> Vec<String> {
    let Some(expr) = b.outputs().get("principalId").cloned() else {
        return vec![format!("{}: no principalId output", b.name)];
    };
    let reused: Vec<String> = b
        .resource_names()
        .into_iter()
        .filter(|(_, _, name)| name == "existingSystemTopicName")
        .map(|(symbol, _, _)| symbol)
        .collect();
    let mut out = Vec::new();
    if reused.is_empty() {
        out.push(format!("{}: no existing system topic", b.name));
    }
    for symbol in reused {
        let safe = format!("{symbol}.?identity.?principalId ??");
        let plain = format!("{symbol}.identity");
        if !expr.contains(&safe) || expr.contains(&plain) {
            out.push(format!("{}: principalId = {expr}", b.name));
        }
    }
    out
}

#[test]
fn reused_system_topic_identity_is_read_safely() {
    let b = bicep("infra/modules/eventGridTopic.bicep");
    let problems = topic_identity_problems(&b);
    assert!(problems.is_empty(), "{problems:?}");
    // roles.bicep skips the topic's roles for the '' this gives.
    let roles = bicep("infra/modules/roles.bicep");
    assert!(
        roles
            .source
            .matches("= if (!empty(topicPrincipalId))")
            .count()
            >= 2
    );
    // Detection: the plain dereference.
    let src = b.source.replace(
        "(reused.?identity.?principalId ?? '')",
        "reused.identity.principalId",
    );
    assert_ne!(src, b.source);
    let problems = topic_identity_problems(&Bicep::parse("broken", src).unwrap());
    assert_eq!(problems.len(), 1, "{problems:?}");
}

/// Resource provider namespaces a subscription needs registered for the templates: those of
/// every resource type (Microsoft.Authorization is always registered), plus Microsoft.App for
/// a Flex Consumption plan.
fn provider_namespaces() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in files_with_ext(&repo_root().join("infra"), ".bicep") {
        let b = Bicep::load(&f).unwrap();
        for (_, ty, _) in b.resource_names() {
            let ns = ty.split('/').next().unwrap_or_default();
            if ns != "Microsoft.Authorization" {
                out.insert(ns.to_owned());
            }
        }
        if b.strings().iter().any(|s| s == "FlexConsumption") {
            out.insert("Microsoft.App".to_owned());
        }
    }
    out
}

/// What docs/deploy.md lacks: a provider registration for each namespace, the rights to deploy
/// the role assignments, and a retried first zip deploy.
fn deploy_doc_problems(docs: &str, namespaces: &BTreeSet<String>) -> Vec<String> {
    let blocks: Vec<&str> = docs.split("```").skip(1).step_by(2).collect();
    let mut out = Vec::new();
    match blocks.iter().find(|b| b.contains("az provider register")) {
        Some(block) => {
            let tokens: BTreeSet<&str> = block
                .split(|c: char| c.is_whitespace() || "\\\";".contains(c))
                .collect();
            for ns in namespaces {
                if !tokens.contains(ns.as_str()) {
                    out.push(format!("{ns} is not registered"));
                }
            }
        }
        None => out.push("no az provider register".into()),
    }
    let prose = docs.split_whitespace().collect::<Vec<_>>().join(" ");
    if !prose.contains("Owner, or Contributor plus User Access Administrator") {
        out.push("rights: Owner, or Contributor plus User Access Administrator".into());
    }
    let zip = blocks.iter().find(|b| b.contains("config-zip"));
    if !zip.is_some_and(|b| b.contains("403") && b.contains("sleep")) {
        out.push("the first zip deploy is not retried on 403".into());
    }
    out
}

#[test]
fn deploy_doc_registers_providers_and_retries_the_first_zip_deploy() {
    let namespaces = provider_namespaces();
    for ns in [
        "Microsoft.Storage",
        "Microsoft.Web",
        "Microsoft.App",
        "Microsoft.EventGrid",
        "Microsoft.Insights",
        "Microsoft.OperationalInsights",
        "Microsoft.Databricks",
    ] {
        assert!(namespaces.contains(ns), "{ns} not found in {namespaces:?}");
    }
    let docs = read(&repo_root().join("docs/deploy.md")).unwrap();
    let problems = deploy_doc_problems(&docs, &namespaces);
    assert!(problems.is_empty(), "docs/deploy.md: {problems:?}");
    // A script that zip-deploys retries too (none does today: scripts/package only names it).
    for f in files_with_ext(&repo_root().join("scripts"), "") {
        let Ok(text) = read(&f) else { continue };
        let deploys = text
            .lines()
            .any(|l| l.contains("config-zip") && !l.trim_start().starts_with('#'));
        assert!(
            !deploys || text.contains("sleep"),
            "{} zip-deploys without retrying",
            f.display()
        );
    }
    // Detection: a namespace left out, the old rights, a single attempt.
    let broken = docs
        .replacen("Microsoft.EventGrid \\", "\\", 1)
        .replace("Owner,\n  or Contributor plus", "Owner or")
        .replace("sleep \"$delay\"", "");
    assert_eq!(
        deploy_doc_problems(&broken, &namespaces).len(),
        3,
        "{:?}",
        deploy_doc_problems(&broken, &namespaces)
    );
}
