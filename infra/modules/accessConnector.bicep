// The Databricks access connector: a managed identity Unity Catalog uses as a storage credential
// (`crdb-delta unity-catalog --access-connector-id`). ARM cannot create Unity Catalog objects.
// https://learn.microsoft.com/azure/databricks/connect/unity-catalog/cloud-storage/azure-managed-identities
// https://learn.microsoft.com/azure/templates/microsoft.databricks/accessconnectors

param location string
param tags object = {}
param name string

resource connector 'Microsoft.Databricks/accessConnectors@2024-05-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {}
}

output id string = connector.id
output principalId string = connector.identity.principalId
