// The subscription that turns changefeed blob writes into function invocations. Created only
// when `deployEventSubscription` is true (main.bicep): an AzureFunction destination is validated
// against the deployed function, so the code must be deployed first (docs/deploy.md, step 4).
//
// Filters: only BlobCreated, only below the changefeed container/prefix (the subject needs
// `/blobs/`), only committed writes (data.api) — the handler skips everything else anyway and
// CatchUp finds what a filter left out (function_app/README.md, docs/host-protocol.md §4).
//   https://learn.microsoft.com/azure/event-grid/event-filtering
//   https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage
// Retry and dead-lettering: https://learn.microsoft.com/azure/event-grid/delivery-and-retry
//   https://learn.microsoft.com/azure/event-grid/manage-event-delivery
// Destinations (AzureFunction, StorageQueue) and managed-identity delivery:
//   https://learn.microsoft.com/azure/templates/microsoft.eventgrid/systemtopics/eventsubscriptions
//   https://learn.microsoft.com/azure/event-grid/managed-service-identity

param systemTopicName string
param subscriptionName string = 'crdb-delta-changefeed'
@allowed([
  'azureFunction'
  'storageQueue'
])
param deliveryRoute string
param functionAppId string
param storageAccountId string
param changefeedContainer string
param changefeedPrefix string
param queueName string
param deadLetterContainer string
// Event Grid's limits (https://learn.microsoft.com/azure/event-grid/manage-event-delivery).
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

var blobsRoot = '/blobServices/default/containers/${changefeedContainer}/blobs/'
var subjectBeginsWith = empty(changefeedPrefix) ? blobsRoot : '${blobsRoot}${changefeedPrefix}/'

var functionDestination = {
  endpointType: 'AzureFunction'
  properties: {
    resourceId: '${functionAppId}/functions/BlobCreated'
    // One event per invocation: the Functions extension fails a whole batch if one event fails.
    maxEventsPerBatch: 1
    preferredBatchSizeInKilobytes: 64
  }
}

var queueDestination = {
  endpointType: 'StorageQueue'
  properties: {
    resourceId: storageAccountId
    queueName: queueName
    // -1: messages never expire; the poison queue and CatchUp bound what is left behind.
    queueMessageTimeToLiveInSeconds: -1
  }
}

var delivery = deliveryRoute == 'storageQueue'
  ? {
      deliveryWithResourceIdentity: {
        identity: {
          type: 'SystemAssigned'
        }
        destination: queueDestination
      }
    }
  : {
      destination: functionDestination
    }

var common = {
  eventDeliverySchema: 'EventGridSchema'
  filter: {
    includedEventTypes: [
      'Microsoft.Storage.BlobCreated'
    ]
    subjectBeginsWith: subjectBeginsWith
    isSubjectCaseSensitive: true
    advancedFilters: [
      {
        operatorType: 'StringIn'
        key: 'data.api'
        values: [
          'PutBlob'
          'PutBlockList'
          'FlushWithClose'
          'SftpCommit'
        ]
      }
    ]
  }
  retryPolicy: {
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
  }
  deadLetterWithResourceIdentity: {
    identity: {
      type: 'SystemAssigned'
    }
    deadLetterDestination: {
      endpointType: 'StorageBlob'
      properties: {
        resourceId: storageAccountId
        blobContainerName: deadLetterContainer
      }
    }
  }
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

resource subscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: topic
  name: subscriptionName
  properties: union(common, delivery)
}

output name string = subscription.name
output subjectBeginsWith string = subjectBeginsWith
