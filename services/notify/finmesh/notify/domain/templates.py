"""Message templates in zh-CN and en, chosen by the recipient's locale."""

from __future__ import annotations

from string import Template

DEFAULT_LOCALE = "zh-CN"

TEMPLATES: dict[str, dict[str, str]] = {
    "payment_sent": {
        "zh-CN": "您已成功付款 ${amount} ${currency}（付款编号 ${payment_id}）。",
        "en": "You paid ${amount} ${currency} (payment ${payment_id}).",
    },
    "payment_received": {
        "zh-CN": "您已收到 ${amount} ${currency}（付款编号 ${payment_id}）。",
        "en": "You received ${amount} ${currency} (payment ${payment_id}).",
    },
    "payment_held": {
        "zh-CN": "您的付款 ${amount} ${currency} 正在审核中（付款编号 ${payment_id}）。",
        "en": "Your payment of ${amount} ${currency} is being reviewed (payment ${payment_id}).",
    },
    "topup_succeeded": {
        "zh-CN": "充值成功：${amount} ${currency}。",
        "en": "Top-up of ${amount} ${currency} succeeded.",
    },
    "welcome": {
        "zh-CN": "欢迎使用 finmesh。请完成实名认证后开始交易。",
        "en": "Welcome to finmesh. Complete identity verification to start transacting.",
    },
}


def render(template: str, locale: str, params: dict[str, str]) -> str:
    """Render `template` in `locale` (falling back to zh-CN); unknown names raise KeyError."""
    texts = TEMPLATES[template]
    text = texts.get(locale) or texts[DEFAULT_LOCALE]
    return Template(text).safe_substitute(params)
