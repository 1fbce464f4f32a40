// The Function App identity's roles on its own host storage account (never on the data account).
//
// A module of its own so that the role assignment names can be keyed by the principal id: a
// resource `name` must be known when the deployment starts (Bicep error BCP120), which a module
// parameter is and `site.identity.principalId` is not. Keyed by `site.id` instead, a deleted and
// re-created app (same name, same id, new identity) would map to the old assignment, and ARM
// refuses to change its principal (RoleAssignmentUpdateNotPermitted).
//   https://learn.microsoft.com/azure/role-based-access-control/role-assignments-template#name-and-resource-id
// Identity-based host storage (AzureWebJobsStorage__accountName):
//   https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity

param hostStorageAccountName string
@description('Principal id of the Function App system-assigned identity.')
param principalId string

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

resource hostStorage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: hostStorageAccountName
}

// The host keeps keys, timer locks and the deployment package in blobs.
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: hostStorage
  name: guid(hostStorage.id, principalId, roles.storageBlobDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The host writes its diagnostic events to a table of AzureWebJobsStorage.
resource hostTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: hostStorage
  name: guid(hostStorage.id, principalId, roles.storageTableDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
