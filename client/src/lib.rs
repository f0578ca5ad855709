//! The vtasks client. The async client and worker core land with the client issue.
