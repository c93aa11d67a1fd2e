"""RevealPersonalData, EraseUser and ListPiiAccessLog."""

from __future__ import annotations

from finmesh.identity.api import convert
from finmesh.identity.api.requests import Context, require_user_id
from finmesh.identity.usecases import personal_data
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.storage.idempotency import KeyedCall, validate_key

_FIELDS = {
    pb.PERSONAL_DATA_FIELD_LEGAL_NAME: "legal_name",
    pb.PERSONAL_DATA_FIELD_ID_NUMBER: "id_number",
    pb.PERSONAL_DATA_FIELD_PHONE: "phone",
    pb.PERSONAL_DATA_FIELD_EMAIL: "email",
}
_BY_NAME = {name: number for number, name in _FIELDS.items()}
MAX_PAGE = 200


class PersonalDataRpcs:
    deps: Deps

    async def RevealPersonalData(
        self, request: pb.RevealPersonalDataRequest, context: Context
    ) -> pb.RevealPersonalDataResponse:
        v = Validator()
        v.require(0 < len(request.user_id) <= 36, "user_id", "required")
        v.require(
            0 < len(request.fields) <= 4 and all(f in _FIELDS for f in request.fields),
            "fields",
            "one or more of LEGAL_NAME, ID_NUMBER, PHONE, EMAIL",
        )
        v.require(3 <= len(request.purpose.strip()) <= 200, "purpose", "why the clear data is needed, 3 to 200 chars")
        v.raise_if_any()
        names = sorted({_FIELDS[f] for f in request.fields})
        return pb.RevealPersonalDataResponse(
            **await personal_data.reveal(self.deps, request.user_id, names, request.purpose)
        )

    async def EraseUser(self, request: pb.EraseUserRequest, context: Context) -> pb.EraseUserResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if not 0 < len(request.reason) <= 200:
            raise InvalidArgument(FieldViolation("reason", "required, at most 200 characters"))
        return await personal_data.erase(
            d,
            KeyedCall(
                "EraseUser", request, pb.EraseUserResponse, lambda user: pb.EraseUserResponse(user=convert.user(user))
            ),
            request.user_id,
        )

    async def ListPiiAccessLog(
        self, request: pb.ListPiiAccessLogRequest, context: Context
    ) -> pb.ListPiiAccessLogResponse:
        v = Validator()
        v.require(len(request.user_id) <= 36, "user_id", "at most 36 characters")
        v.require(0 <= request.page_size <= MAX_PAGE, "page_size", f"0 to {MAX_PAGE}")
        # isascii too: str.isdigit passes "²", which int() refuses.
        v.require(
            request.page_token == ""
            or (request.page_token.isascii() and request.page_token.isdigit() and len(request.page_token) < 19),
            "page_token",
            "a token from a previous page",
        )
        v.raise_if_any()
        entries, more = await personal_data.access_log(
            self.deps, request.user_id, int(request.page_token or 0), request.page_size or 50
        )
        return pb.ListPiiAccessLogResponse(
            entries=[
                pb.PiiAccess(
                    user_id=e.user_id,
                    accessor_id=e.accessor_id,
                    purpose=e.purpose,
                    fields=[_BY_NAME[f] for f in e.fields if f in _BY_NAME],
                    accessed_at=convert.timestamp(e.accessed_at),
                )
                for e in entries
            ],
            next_page_token=str(entries[-1].entry_id) if more else "",
        )
