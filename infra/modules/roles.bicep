// Data-plane role assignments, each scoped to the one container or queue it is needed on
// (least privilege: no account-wide data role on the changefeed/target account).
//
// Role definition ids are Azure built-in roles, listed with their GUIDs at
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
// (infra/check keeps the same table and fails on any other GUID).
// Scoping a role assignment to a child resource (container, queue) with `scope:`:
// https://learn.microsoft.com/azure/azure-resource-manager/bicep/scope-extension

@description('The data storage account (changefeed and target containers).')
param storageAccountName string
param changefeedContainer string
param targetContainer string
param deadLetterContainer string
param queueName string
@description('Queue of the fan-out (ApplyTable reads it, the RESOLVED invocations write it).')
param applyQueueName string

@description('Principal id of the Function App system-assigned identity.')
param functionPrincipalId string
@description('Principal id of the Event Grid system topic identity (queue delivery, dead letters); empty to skip.')
param topicPrincipalId string = ''
@description('Principal id of the Databricks access connector; empty to skip.')
param accessConnectorPrincipalId string = ''
@description('Principal id (Entra app or managed identity) CockroachDB writes the changefeed as; empty to skip.')
param changefeedWriterPrincipalId string = ''
@description('ServicePrincipal for managed identities and app registrations.')
param changefeedWriterPrincipalType string = 'ServicePrincipal'

var roles = {
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataReader: '19e7f393-937e-4f77-808e-94535e297925'
  storageQueueDataMessageProcessor: '8a0f0c08-91a1-4084-bc3d-661d67233fed'
  storageQueueDataMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
}

resource account 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' existing = {
  parent: account
  name: 'default'
}

resource changefeed 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = {
  parent: blobService
  name: changefeedContainer
}

resource target 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = {
  parent: blobService
  name: targetContainer
}

resource deadLetter 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = {
  parent: blobService
  name: deadLetterContainer
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2024-01-01' existing = {
  parent: account
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' existing = {
  parent: queueService
  name: queueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' existing = {
  parent: queueService
  name: '${queueName}-poison'
}

resource applyQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' existing = {
  parent: queueService
  name: applyQueueName
}

resource applyPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' existing = {
  parent: queueService
  name: '${applyQueueName}-poison'
}

// The handler only lists and reads the changefeed; everything it writes (buffer markers, lease,
// Delta tables) is below the target.
resource fnReadsChangefeed 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: changefeed
  name: guid(changefeed.id, functionPrincipalId, roles.storageBlobDataReader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnWritesTarget 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: target
  name: guid(target.id, functionPrincipalId, roles.storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Queue trigger with an identity: Reader + Message Processor
// (https://learn.microsoft.com/azure/azure-functions/functions-bindings-storage-queue-trigger#identity-based-connections).
resource fnReadsQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: queue
  name: guid(queue.id, functionPrincipalId, roles.storageQueueDataReader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataReader)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnProcessesQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: queue
  name: guid(queue.id, functionPrincipalId, roles.storageQueueDataMessageProcessor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageProcessor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// A message that failed maxDequeueCount times is added to `<queue>-poison` (created by
// storage.bicep) by the app's identity: Message Sender on that queue only.
resource fnSendsPoisonQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: poisonQueue
  name: guid(poisonQueue.id, functionPrincipalId, roles.storageQueueDataMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The fan-out queue: ApplyTable's trigger needs Reader + Message Processor, like BlobQueue's; the
// `tables` output binding of BlobCreated/BlobQueue/CatchUp adds messages: Message Sender
// (https://learn.microsoft.com/azure/azure-functions/functions-bindings-storage-queue-output#identity-based-connections).
resource fnReadsApplyQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: applyQueue
  name: guid(applyQueue.id, functionPrincipalId, roles.storageQueueDataReader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataReader)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnProcessesApplyQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: applyQueue
  name: guid(applyQueue.id, functionPrincipalId, roles.storageQueueDataMessageProcessor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageProcessor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnSendsApplyQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: applyQueue
  name: guid(applyQueue.id, functionPrincipalId, roles.storageQueueDataMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// An ApplyTable message that failed maxDequeueCount times moves to `<apply queue>-poison`.
resource fnSendsApplyPoisonQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: applyPoisonQueue
  name: guid(applyPoisonQueue.id, functionPrincipalId, roles.storageQueueDataMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Event Grid delivering with its managed identity: Message Sender on the queue, blob write on the
// dead-letter container (https://learn.microsoft.com/azure/event-grid/add-identity-roles).
resource topicSendsQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(topicPrincipalId)) {
  scope: queue
  name: guid(queue.id, topicPrincipalId, roles.storageQueueDataMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: topicPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource topicWritesDeadLetter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(topicPrincipalId)) {
  scope: deadLetter
  name: guid(deadLetter.id, topicPrincipalId, roles.storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: topicPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Databricks reads (and may OPTIMIZE/VACUUM) the Delta tables through the access connector.
resource connectorWritesTarget 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(accessConnectorPrincipalId)) {
  scope: target
  name: guid(target.id, accessConnectorPrincipalId, roles.storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: accessConnectorPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// CockroachDB's changefeed sink writes (and overwrites on retry) files in the changefeed container.
resource writerWritesChangefeed 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(changefeedWriterPrincipalId)) {
  scope: changefeed
  name: guid(changefeed.id, changefeedWriterPrincipalId, roles.storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: changefeedWriterPrincipalId
    principalType: changefeedWriterPrincipalType
  }
}
