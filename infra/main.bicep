// crdb-delta: CockroachDB changefeeds (cloud storage sink) into Delta tables, deployed with
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.dev.parameters.json
// Two phases (docs/deploy.md): first with deployEventSubscription=false, then zip-deploy the
// code, then again with deployEventSubscription=true (an AzureFunction subscription is validated
// against the deployed BlobCreated function).
//
// Bicep reference: https://learn.microsoft.com/azure/azure-resource-manager/bicep/file
// Modules: https://learn.microsoft.com/azure/azure-resource-manager/bicep/modules

targetScope = 'resourceGroup'

param location string = resourceGroup().location
@description('Short lowercase prefix of every resource name.')
@minLength(3)
@maxLength(11)
param namePrefix string = 'crdbdelta'
@allowed([
  'dev'
  'prod'
])
param environmentName string = 'dev'
param tags object = {}

@description('ADLS Gen2 account for the changefeed and the Delta tables (globally unique).')
@minLength(3)
@maxLength(24)
param storageAccountName string = take('${namePrefix}${environmentName}${uniqueString(resourceGroup().id)}', 24)
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_LRS'
@description('Shared keys on the data account: only for a CockroachDB sink URI with AZURE_ACCOUNT_KEY.')
param allowSharedKeyAccess bool = false

@description('Container CockroachDB writes the changefeed into (the azure-blob:// URI host).')
param changefeedContainer string = 'changefeed'
@description('Path below the container (the azure-blob:// URI path); the handler and Event Grid accept nothing outside it.')
param changefeedPrefix string = 'cdc'
@description('Container of the Delta tables; not a Unity Catalog volume.')
param targetContainer string = 'delta'
@description('Path of the target root in the target container: tables go to <root>/<table>.')
param targetPrefix string = 'tables'
param deadLetterContainer string = 'eventgrid-deadletter'
@description('Queue of the queue route (BlobQueue reads it through %CRDB_DELTA_QUEUE%); failed messages go to <name>-poison.')
@minLength(3)
@maxLength(56)
param queueName string = 'crdb-delta-blobs'
@description('Queue of the fan-out: one message per table of a RESOLVED, applied by ApplyTable (%CRDB_DELTA_APPLY_QUEUE%); failed messages go to <name>-poison.')
@minLength(3)
@maxLength(56)
param applyQueueName string = 'crdb-delta-tables'
@description('Fan the tables of a RESOLVED out across instances (CRDB_DELTA_FAN_OUT): one ApplyTable message per table, each applied under its own lease. Off by default: on one instance it gains nothing and makes about a fifth more storage requests (docs/benchmarks.md); turn it on when the tables of a RESOLVED together need more than one instance.')
param fanOut bool = false

@description('azureFunction: Event Grid pushes to BlobCreated; storageQueue: Event Grid writes a queue BlobQueue pulls.')
@allowed([
  'azureFunction'
  'storageQueue'
])
param deliveryRoute string = 'storageQueue'
@description('Phase 2: create the Event Grid subscription (needs the code deployed for azureFunction).')
param deployEventSubscription bool = false
@description('An existing system topic of the storage account to reuse (only one per account is allowed).')
param existingSystemTopicName string = ''
@description('Event Grid delivery attempts before dead-lettering (Event Grid accepts 1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30
@description('Minutes Event Grid keeps retrying an event (Event Grid accepts 1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

@allowed([
  'update_delete'
  'append_only'
  'scd2'
])
param mode string = 'update_delete'
param configPath string = ''
@description('Key Vault secret URI holding a CockroachDB SQL URL (schema re-reads after a schema change); empty for none.')
param crdbUrlSecretUri string = ''
param leaseSeconds int = 120

@description('Seconds after which one apply starts no new RESOLVED step (under functionTimeout).')
param applyBudgetSeconds int = 420
param maxBodyBytes int = 4194304
@description('NCRONTAB (six fields) of the CatchUp timer.')
param catchUpSchedule string = '0 */5 * * * *'
param logFilter string = 'info,buoyant_kernel=warn'
@description('Flex Consumption scale-out limit; 40 is the lowest value every region accepts.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048
param logRetentionInDays int = 30

@description('Create a Databricks access connector with Storage Blob Data Contributor on the target container.')
param deployAccessConnector bool = true
@description('Principal id CockroachDB writes as (Entra app or managed identity); empty to assign nothing.')
param changefeedWriterPrincipalId string = ''

var suffix = uniqueString(resourceGroup().id, namePrefix, environmentName)
var baseName = '${namePrefix}-${environmentName}'

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: tags
    workspaceName: '${baseName}-logs'
    appInsightsName: '${baseName}-ai'
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    tags: tags
    storageAccountName: storageAccountName
    skuName: storageSku
    allowSharedKeyAccess: allowSharedKeyAccess
    changefeedContainer: changefeedContainer
    targetContainer: targetContainer
    deadLetterContainer: deadLetterContainer
    queueName: queueName
    applyQueueName: applyQueueName
  }
}

module functionApp 'modules/functionApp.bicep' = {
  name: 'functionApp'
  params: {
    location: location
    tags: tags
    functionAppName: '${baseName}-${take(suffix, 6)}'
    planName: '${baseName}-plan'
    hostStorageAccountName: take('${namePrefix}fn${suffix}', 24)
    appInsightsConnectionString: monitoring.outputs.connectionString
    dataStorageAccountName: storage.outputs.name
    changefeedContainer: changefeedContainer
    changefeedPrefix: changefeedPrefix
    targetContainer: targetContainer
    targetPrefix: targetPrefix
    queueName: queueName
    applyQueueName: applyQueueName
    fanOut: fanOut
    mode: mode
    configPath: configPath
    crdbUrlSecretUri: crdbUrlSecretUri
    leaseSeconds: leaseSeconds
    applyBudgetSeconds: applyBudgetSeconds
    maxBodyBytes: maxBodyBytes
    catchUpSchedule: catchUpSchedule
    logFilter: logFilter
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
}

module topic 'modules/eventGridTopic.bicep' = {
  name: 'eventGridTopic'
  params: {
    location: location
    tags: tags
    storageAccountId: storage.outputs.id
    systemTopicName: '${baseName}-storage-events'
    existingSystemTopicName: existingSystemTopicName
  }
}

module accessConnector 'modules/accessConnector.bicep' = if (deployAccessConnector) {
  name: 'accessConnector'
  params: {
    location: location
    tags: tags
    name: '${baseName}-uc-connector'
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    storageAccountName: storage.outputs.name
    changefeedContainer: changefeedContainer
    targetContainer: targetContainer
    deadLetterContainer: deadLetterContainer
    queueName: queueName
    applyQueueName: applyQueueName
    functionPrincipalId: functionApp.outputs.principalId
    topicPrincipalId: topic.outputs.principalId
    accessConnectorPrincipalId: deployAccessConnector ? accessConnector.outputs.principalId : ''
    changefeedWriterPrincipalId: changefeedWriterPrincipalId
  }
}

module subscription 'modules/eventSubscription.bicep' = if (deployEventSubscription) {
  name: 'eventSubscription'
  dependsOn: [
    roles
  ]
  params: {
    systemTopicName: topic.outputs.name
    deliveryRoute: deliveryRoute
    functionAppId: functionApp.outputs.id
    storageAccountId: storage.outputs.id
    changefeedContainer: changefeedContainer
    changefeedPrefix: changefeedPrefix
    queueName: queueName
    deadLetterContainer: deadLetterContainer
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
  }
}

var dfs = environment().suffixes.storage

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output storageAccountName string = storage.outputs.name
output changefeedSinkUri string = 'azure-blob://${changefeedContainer}/${changefeedPrefix}?AUTH=implicit&AZURE_ACCOUNT_NAME=${storage.outputs.name}'
output targetUrl string = 'abfss://${targetContainer}@${storage.outputs.name}.dfs.${dfs}/${targetPrefix}'
output accessConnectorId string = deployAccessConnector ? accessConnector.outputs.id : ''
output systemTopicName string = topic.outputs.name
