# Vault policy for kube-dispatcher (deploy/README.md, "Vault"). Least privilege: adapt the
# KV mount and paths, and list one creds path per Kubernetes secrets engine mount and role
# your settings name.

# Kubeconfigs and CA bundles of external clusters, KV v2 at "secret/".
path "secret/data/clusters/*" {
  capabilities = ["read"]
}
path "secret/metadata/clusters/*" {
  capabilities = ["read", "list"]
}

# Registry pull credentials (clusters' `registries`) and Secrets or ConfigMaps filled from
# Vault (`copy_dependencies.from_vault`): only if your settings name such paths.
path "secret/data/registries/*" {
  capabilities = ["read"]
}
path "secret/data/dependencies/*" {
  capabilities = ["read"]
}

# Short-lived ServiceAccount tokens from the Kubernetes secrets engine, and revoking
# their leases once replaced or at shutdown.
path "kubernetes-gpu-h100/creds/dispatcher" {
  capabilities = ["update"]
}
path "sys/leases/revoke/kubernetes-gpu-h100/creds/dispatcher/*" {
  capabilities = ["update"]
}

# Renewing and looking up its own token comes with Vault's `default` policy
# (auth/token/renew-self, auth/token/lookup-self): keep it attached to the role.
