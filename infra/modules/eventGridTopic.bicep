// The Event Grid system topic of the data storage account. Only one system topic per storage
// account is allowed, so an existing one can be reused (`existingSystemTopicName`); it must have
// a system-assigned identity (`az eventgrid system-topic update --identity systemassigned`),
// which delivers to the queue and writes dead letters.
// https://learn.microsoft.com/azure/event-grid/create-view-manage-system-topics-arm
// https://learn.microsoft.com/azure/templates/microsoft.eventgrid/systemtopics
// https://learn.microsoft.com/azure/event-grid/enable-identity-system-topics

param location string
param tags object = {}
param storageAccountId string
@description('Name of the system topic to create (ignored when existingSystemTopicName is set).')
param systemTopicName string
@description('Reuse this existing system topic of the storage account instead of creating one.')
param existingSystemTopicName string = ''

var reuse = !empty(existingSystemTopicName)

resource created 'Microsoft.EventGrid/systemTopics@2025-02-15' = if (!reuse) {
  name: systemTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource reused 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = if (reuse) {
  name: existingSystemTopicName
}

output name string = reuse ? reused.name : created.name
// A reused topic may have no identity: `.?` (safe dereference) yields null instead of failing the
// deployment on `identity.principalId`, and '' makes roles.bicep skip the topic's roles. The
// subscription (phase 2) delivers and dead-letters with that identity, so add it first.
//   https://learn.microsoft.com/azure/azure-resource-manager/bicep/operator-safe-dereference
output principalId string = reuse ? (reused.?identity.?principalId ?? '') : created.identity.principalId
