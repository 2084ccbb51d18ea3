"""The M3Ret encoder in PyTorch eager, written to match core/src/model/vit.rs
layer for layer (Conv3d patch embedding, fixed 3-axis sin-cos positions, pre-norm
blocks with scaled_dot_product_attention, LayerNorm eps 1e-6, GELU). It is the
baseline the Rust benchmarks are measured against; it is not used by m3ret."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


def axis_embedding(dim, n, device):
    half = dim // 2
    omega = torch.exp(torch.arange(half, dtype=torch.float64, device=device) / half * -math.log(10000.0))
    angles = torch.arange(n, dtype=torch.float64, device=device)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], 1).float()


def sincos_3d(width, grid, device):
    ds = dh = 2 * (width // 6)
    dw = width - ds - dh
    gs, gh, gw = grid
    es = axis_embedding(ds, gs, device)[:, None, None, :].expand(gs, gh, gw, ds)
    eh = axis_embedding(dh, gh, device)[None, :, None, :].expand(gs, gh, gw, dh)
    ew = axis_embedding(dw, gw, device)[None, None, :, :].expand(gs, gh, gw, dw)
    return torch.cat([es, eh, ew], -1).reshape(gs * gh * gw, width)


class Block(nn.Module):
    def __init__(self, width, heads, mlp_ratio=4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, int(width * mlp_ratio))
        self.fc2 = nn.Linear(int(width * mlp_ratio), width)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Encoder(nn.Module):
    def __init__(self, preset="small", patch=(4, 16, 16), cls_token=True):
        super().__init__()
        width, depth, heads = PRESETS[preset]
        self.width, self.patch = width, patch
        self.patch_embed = nn.Conv3d(3, width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if cls_token else None
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x):
        grid = [x.shape[2 + i] // self.patch[i] for i in range(3)]
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + sincos_3d(self.width, grid, x.device)[None]
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def embed(self, x):
        t = self.forward(x)
        pooled = torch.cat([t[:, 0], t[:, 1:].mean(1)], 1) if self.cls_token is not None else t.mean(1)
        return F.normalize(pooled, dim=-1)
