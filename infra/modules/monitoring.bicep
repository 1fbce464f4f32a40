// Log Analytics workspace + workspace-based Application Insights for the Functions host logs
// (the handler's `Logs` lines and stderr go there).
// https://learn.microsoft.com/azure/templates/microsoft.operationalinsights/workspaces
// https://learn.microsoft.com/azure/templates/microsoft.insights/components
// https://learn.microsoft.com/azure/azure-functions/configure-monitoring

param location string
param tags object = {}
param workspaceName string
param appInsightsName string
@description('Days of log retention (Log Analytics bills ingestion and retention beyond 31 days).')
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: false
  }
}

output appInsightsId string = appInsights.id
output connectionString string = appInsights.properties.ConnectionString
