// The Function App on Flex Consumption (Linux, runtime `custom`: our `crdb-delta serve` custom
// handler), with a system-assigned identity, identity-based host storage in its own account
// (so the host's Storage Blob Data Owner never reaches the changefeed or the Delta tables), and
// exactly the app settings the handler reads (function_app/README.md "Settings";
// handler/serve/mod.rs `Settings::from_vars`; infra/check fails when they drift apart).
//
// Flex Consumption in Bicep (functionAppConfig: deployment storage, scale, runtime):
//   https://learn.microsoft.com/azure/azure-functions/functions-infrastructure-as-code?pivots=flex-consumption-plan
//   https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to
// Runtime names accepted in functionAppConfig.runtime.name (dotnet-isolated, node, java,
// powershell, python, custom):
//   https://learn.microsoft.com/python/api/azure-mgmt-web/azure.mgmt.web.models.runtimename
// Custom handlers on Flex Consumption (stack `custom`): microsoft/vscode-azurefunctions#4596
// ("Custom handlers was added to flex and deployed to the stacks API"); version '1.0' follows the
// `{ name: 'go', version: '1.0' }` shape a Functions PM gave in Azure/azure-dev#8307 (not verified
// for `custom`: check `az functionapp list-flexconsumption-runtimes -l <region> --runtime custom`).
// Flex deprecates FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION / WEBSITE_RUN_FROM_PACKAGE
// as app settings (they moved into functionAppConfig):
//   https://learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations
// Identity-based host storage (AzureWebJobsStorage__accountName, Storage Blob Data Owner):
//   https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity
// Identity-based queue trigger connection (<PREFIX>__queueServiceUri):
//   https://learn.microsoft.com/azure/azure-functions/functions-bindings-storage-queue-trigger#identity-based-connections

param location string
param tags object = {}
param functionAppName string
param planName string
@minLength(3)
@maxLength(24)
param hostStorageAccountName string
param deploymentContainer string = 'app-package'
param appInsightsConnectionString string

@description('The data account holding the changefeed and target containers.')
param dataStorageAccountName string
param changefeedContainer string
param changefeedPrefix string
param targetContainer string
param targetPrefix string
param queueName string
@description('Queue of the fan-out (%CRDB_DELTA_APPLY_QUEUE%: ApplyTable\'s trigger and the `tables` output bindings).')
param applyQueueName string
@description('Fan the tables of a RESOLVED out to ApplyTable, one queue message per table (CRDB_DELTA_FAN_OUT); false: the RESOLVED invocation applies every table itself.')
param fanOut bool = true

@allowed([
  'update_delete'
  'append_only'
  'scd2'
])
param mode string = 'update_delete'
@description('Path of a config JSON deployed with the app (see README "sync --config"); empty for none.')
param configPath string = ''
@description('Key Vault secret URI (https://<vault>.vault.azure.net/secrets/<name>) holding a CockroachDB SQL URL: a table whose files show a schema change gets its keys and types read again. The app identity needs Key Vault Secrets User on it. Empty for none.')
param crdbUrlSecretUri string = ''
param leaseSeconds int = 120

@description('No new RESOLVED step starts after this many seconds of one apply; keep it well under functionTimeout (host.json, 10 minutes).')
param applyBudgetSeconds int = 420
param maxBodyBytes int = 4194304
param catchUpSchedule string = '0 */5 * * * *'
param logFilter string = 'info,buoyant_kernel=warn'

// Flex Consumption: 40-1000 (https://learn.microsoft.com/azure/azure-functions/event-driven-scaling#limit-scale-out
// gave 40 as the lowest value; newer revisions give 1, but lower values were refused outside a
// few regions, and 40 is valid under both).
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

var storageSuffix = environment().suffixes.storage

resource hostStorage 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  name: hostStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
  }
}

resource hostBlobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: hostStorage
  name: 'default'
}

// Flex Consumption runs the app from a package in this container (zip deploy uploads it here).
resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: hostBlobService
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      // Replaces the FUNCTIONS_WORKER_RUNTIME=custom app setting on Flex Consumption.
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

// Exactly what the host and `crdb-delta serve` read. abfss:// URLs carry the account, so the
// handler checks events against it; AZURE_STORAGE_ACCOUNT_NAME is object_store's default account.
var appSettings = {
  AzureWebJobsStorage__accountName: hostStorage.name
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  CRDB_DELTA_SOURCE: 'abfss://${changefeedContainer}@${dataStorageAccountName}.dfs.${storageSuffix}/${changefeedPrefix}'
  CRDB_DELTA_TARGET: 'abfss://${targetContainer}@${dataStorageAccountName}.dfs.${storageSuffix}/${targetPrefix}'
  CRDB_DELTA_MODE: mode
  CRDB_DELTA_CONFIG: configPath
  // A Key Vault reference: the URL's password is in no app setting's plain value.
  CRDB_DELTA_CRDB_URL: empty(crdbUrlSecretUri) ? '' : '@Microsoft.KeyVault(SecretUri=${crdbUrlSecretUri})'
  CRDB_DELTA_SOURCE_ACCOUNT: dataStorageAccountName
  CRDB_DELTA_LEASE_SECONDS: string(leaseSeconds)
  CRDB_DELTA_APPLY_BUDGET_SECONDS: string(applyBudgetSeconds)
  CRDB_DELTA_MAX_BODY_BYTES: string(maxBodyBytes)
  CRDB_DELTA_LOG: logFilter
  AZURE_STORAGE_ACCOUNT_NAME: dataStorageAccountName
  CRDB_DELTA_QUEUE: queueName
  // Set even with fan-out off: the `tables` output bindings and ApplyTable name
  // %CRDB_DELTA_APPLY_QUEUE%, and the host does not index a function whose %setting% does not
  // resolve ("'%…%' does not resolve to a value").
  CRDB_DELTA_APPLY_QUEUE: applyQueueName
  // Spelled out rather than string(fanOut), which ARM may render as 'True'.
  CRDB_DELTA_FAN_OUT: fanOut ? 'true' : 'false'
  CRDB_DELTA_QUEUE_CONNECTION__queueServiceUri: 'https://${dataStorageAccountName}.queue.${storageSuffix}'
  CRDB_DELTA_CATCHUP_SCHEDULE: catchUpSchedule
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: appSettings
}

// The host keeps keys, timer locks and the deployment package in its own account (Blob Data
// Owner) and writes diagnostic events to a table there (Table Data Contributor). In a module so
// the assignments are keyed by the principal id, not by site.id (see hostStorageRoles.bicep).
module hostRoles 'hostStorageRoles.bicep' = {
  name: '${functionAppName}-host-roles'
  params: {
    hostStorageAccountName: hostStorage.name
    principalId: site.identity.principalId
  }
}

output id string = site.id
output name string = site.name
output principalId string = site.identity.principalId
output defaultHostName string = site.properties.defaultHostName
