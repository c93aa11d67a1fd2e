"""A verified user's country of residence (ISO 3166-1 alpha-2), as identity's events tell the mesh.

Identity verifies people by an 18-character PRC identity number (GB 11643) and the real-name registry. Every
document with such a number is issued to someone living in mainland China: the resident identity card, the
residence permit of Hong Kong, Macao and Taiwan residents (region 81-83) and the foreign permanent resident
ID card (9xxxxx). So a verified user's country of residence is CN. It travels as a code in
identity.user.verified.v1 (risk's geography rule compares a payment's IP country with it), never with the
number it was read from. When identity verifies other documents (a passport), the country becomes the
document's and this is where it is decided.
"""

from __future__ import annotations

HOLDERS_OF_PRC_ID_NUMBERS = "CN"


def country_of_residence() -> str:
    return HOLDERS_OF_PRC_ID_NUMBERS
