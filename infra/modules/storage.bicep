// The data account: ADLS Gen2 (hierarchical namespace, which Unity Catalog external locations
// need), the changefeed container CockroachDB writes, the Delta target container (kept apart
// from any Unity Catalog volume: a table may not live inside a volume), the Event Grid
// dead-letter container, the queue of the queue route and the apply queue of the fan-out.
//
// Storage account resource: https://learn.microsoft.com/azure/templates/microsoft.storage/storageaccounts
// HNS accounts for ADLS Gen2: https://learn.microsoft.com/azure/storage/blobs/create-data-lake-storage-account
// Unity Catalog external locations need ADLS Gen2 (abfss://):
// https://learn.microsoft.com/azure/databricks/connect/unity-catalog/cloud-storage/external-locations

param location string
param tags object = {}
@minLength(3)
@maxLength(24)
param storageAccountName string
param changefeedContainer string
param targetContainer string
param deadLetterContainer string
@description('Queue of the queue route; its poison queue is `<name>-poison` (queue names: 3-63 characters).')
@minLength(3)
@maxLength(56)
param queueName string
@description('Queue of the fan-out: one message per table of a RESOLVED, read by ApplyTable; its poison queue is `<name>-poison`.')
@minLength(3)
@maxLength(56)
param applyQueueName string
@description('CockroachDB with AZURE_ACCOUNT_KEY needs shared keys; keep false with AUTH=implicit or AUTH=specified (Entra ID).')
param allowSharedKeyAccess bool = false
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_LRS'

resource account 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    isHnsEnabled: true
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: account
  name: 'default'
}

resource changefeed 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: changefeedContainer
  properties: {
    publicAccess: 'None'
  }
}

resource target 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: targetContainer
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetter 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: deadLetterContainer
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2024-01-01' = {
  parent: account
  name: 'default'
}

// Always created (cheap, empty when unused) so the BlobQueue function's `%CRDB_DELTA_QUEUE%`
// always resolves.
resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' = {
  parent: queueService
  name: queueName
}

// After maxDequeueCount failed attempts the queue extension moves a message to `<name>-poison`
// (https://learn.microsoft.com/azure/azure-functions/functions-bindings-storage-queue-trigger#poison-messages).
// The host would create it on first use, but its identity has no right to create queues (its
// roles are on single queues, not the account), so the message would never move: the template
// creates it and roles.bicep lets the app send to it.
resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' = {
  parent: queueService
  name: '${queueName}-poison'
}

// The fan-out: a RESOLVED invocation answers with one message per table through its `tables`
// output binding (%CRDB_DELTA_APPLY_QUEUE%) and ApplyTable applies each. Always created, like the
// queue above: the output binding's %CRDB_DELTA_APPLY_QUEUE% must resolve even with fan-out off,
// and the app's identity cannot create queues. Its poison queue for the same reason.
resource applyQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' = {
  parent: queueService
  name: applyQueueName
}

resource applyPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' = {
  parent: queueService
  name: '${applyQueueName}-poison'
}

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output dfsEndpoint string = account.properties.primaryEndpoints.dfs
output queueEndpoint string = account.properties.primaryEndpoints.queue
