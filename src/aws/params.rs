//! The Parameter Store calls the ledger, its lock and the queue tickets share.

use aws_sdk_ssm::types::ParameterType;

use super::sdk_err;
use crate::deploy::ports::PortError;

/// Writes String parameter `name`: the version written. Without `overwrite`, `None` if
/// it exists already: creating a parameter that way succeeds for exactly one caller.
pub async fn put(
    client: &aws_sdk_ssm::Client,
    name: &str,
    value: &str,
    overwrite: bool,
) -> Result<Option<u64>, PortError> {
    match client
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::String)
        .overwrite(overwrite)
        .send()
        .await
    {
        Ok(out) => Ok(Some(out.version.max(0) as u64)),
        Err(e)
            if !overwrite
                && e.as_service_error()
                    .is_some_and(|s| s.is_parameter_already_exists()) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_err("SSM PutParameter", e)),
    }
}

/// The value of parameter `name` and its version, if it exists.
pub async fn get(
    client: &aws_sdk_ssm::Client,
    name: &str,
) -> Result<Option<(String, u64)>, PortError> {
    match client.get_parameter().name(name).send().await {
        Ok(out) => Ok(out
            .parameter
            .and_then(|p| Some((p.value?, p.version.max(0) as u64)))),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_err("SSM GetParameter", e)),
    }
}

/// Every parameter directly under `path`, as (name, value), read in one paginated call.
pub async fn under(
    client: &aws_sdk_ssm::Client,
    path: &str,
) -> Result<Vec<(String, String)>, PortError> {
    let mut pages = client
        .get_parameters_by_path()
        .path(path)
        .recursive(false)
        .into_paginator()
        .send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk_err("SSM GetParametersByPath", e))?;
        out.extend(
            page.parameters
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| Some((p.name?, p.value?))),
        );
    }
    Ok(out)
}

/// Deletes `names`, ten a call (DeleteParameters' limit).
pub async fn delete(client: &aws_sdk_ssm::Client, names: &[String]) -> Result<(), PortError> {
    for chunk in names.chunks(10) {
        client
            .delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_err("SSM DeleteParameters", e))?;
    }
    Ok(())
}
