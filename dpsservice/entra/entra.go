// Package entra signs DPS service API requests with Microsoft Entra ID
// tokens from the Azure SDK's azidentity: DefaultAzureCredential covers
// environment service principals, workload and managed identity, and the
// Azure CLI's "az login". It lives apart from dpsservice so that programs
// signing with a connection string do not link the Azure SDK.
package entra

import (
	"context"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/dps-batch/dps-batch/dpsservice"
)

// TokenSource returns tokens for dpsservice.EntraScope from an azcore
// credential.
type TokenSource struct {
	Credential azcore.TokenCredential
}

var _ dpsservice.TokenSource = TokenSource{}

// Token asks the credential for a token.
func (s TokenSource) Token(ctx context.Context) (dpsservice.Token, error) {
	t, err := s.Credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{dpsservice.EntraScope}})
	if err != nil {
		return dpsservice.Token{}, err
	}
	return dpsservice.Token{Value: t.Token, ExpiresOn: t.ExpiresOn}, nil
}

// NewDefault returns a bearer Credential backed by
// azidentity.DefaultAzureCredential. Creating it does not sign in; the first
// request does.
func NewDefault() (*dpsservice.Bearer, error) {
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, err
	}
	return dpsservice.NewBearer(TokenSource{Credential: cred}), nil
}
