"""The teaching demo's UNet and DDPM in PyTorch, written from its published description, as the
reference that `ddpm` must match (parameter names, shapes, outputs) and the baseline that the
benchmark compares against. Run with the project's venv: `.venv/bin/python`."""

import gzip
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx_images(folder, split="train"):
    """The IDX image file of a split (`train` or `t10k`) in `folder`, gzipped or not, as
    uint8 [N, 1, rows, cols]."""
    p = os.path.join(folder, f"{split}-images-idx3-ubyte")
    raw = open(p, "rb").read() if os.path.exists(p) else gzip.open(p + ".gz").read()
    n, r, c = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).copy()).view(n, 1, r, c)


class PositionalEncoding(nn.Module):
    def __init__(self, max_seq_len, d_model):
        super().__init__()
        i_seq = torch.linspace(0, max_seq_len - 1, max_seq_len)
        j_seq = torch.linspace(0, d_model - 2, d_model // 2)
        pos, two_i = torch.meshgrid(i_seq, j_seq, indexing="ij")
        pe_2i = torch.sin(pos / 10000 ** (two_i / d_model))
        pe_2i_1 = torch.cos(pos / 10000 ** (two_i / d_model))
        pe = torch.stack((pe_2i, pe_2i_1), 2).reshape(max_seq_len, d_model)
        self.embedding = nn.Embedding(max_seq_len, d_model)
        self.embedding.weight.data = pe
        self.embedding.requires_grad_(False)

    def forward(self, t):
        return self.embedding(t)


class UnetBlock(nn.Module):
    def __init__(self, shape, in_c, out_c, residual=False):
        super().__init__()
        self.ln = nn.LayerNorm(shape)
        self.conv1 = nn.Conv2d(in_c, out_c, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.activation = nn.ReLU()
        self.residual = residual
        if residual:
            self.residual_conv = nn.Identity() if in_c == out_c else nn.Conv2d(in_c, out_c, 1)

    def forward(self, x):
        out = self.activation(self.conv1(self.ln(x)))
        out = self.conv2(out)
        if self.residual:
            out = out + self.residual_conv(x)
        return self.activation(out)


class UNet(nn.Module):
    def __init__(self, n_steps, img_shape, channels=(10, 20, 40, 80), pe_dim=128, residual=True):
        super().__init__()
        C, H, W = img_shape
        layers = len(channels)
        Hs, Ws = [H], [W]
        cH, cW = H, W
        for _ in range(layers - 1):
            cH //= 2
            cW //= 2
            Hs.append(cH)
            Ws.append(cW)
        self.pe = PositionalEncoding(n_steps, pe_dim)
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.pe_linears_en, self.pe_linears_de = nn.ModuleList(), nn.ModuleList()
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        prev = C
        for ch, cH, cW in zip(channels[:-1], Hs[:-1], Ws[:-1]):
            self.pe_linears_en.append(nn.Sequential(nn.Linear(pe_dim, prev), nn.ReLU(), nn.Linear(prev, prev)))
            self.encoders.append(nn.Sequential(UnetBlock((prev, cH, cW), prev, ch, residual),
                                               UnetBlock((ch, cH, cW), ch, ch, residual)))
            self.downs.append(nn.Conv2d(ch, ch, 2, 2))
            prev = ch
        self.pe_mid = nn.Linear(pe_dim, prev)
        ch = channels[-1]
        self.mid = nn.Sequential(UnetBlock((prev, Hs[-1], Ws[-1]), prev, ch, residual),
                                 UnetBlock((ch, Hs[-1], Ws[-1]), ch, ch, residual))
        prev = ch
        for ch, cH, cW in zip(channels[-2::-1], Hs[-2::-1], Ws[-2::-1]):
            self.pe_linears_de.append(nn.Linear(pe_dim, prev))
            self.ups.append(nn.ConvTranspose2d(prev, ch, 2, 2))
            self.decoders.append(nn.Sequential(UnetBlock((ch * 2, cH, cW), ch * 2, ch, residual),
                                               UnetBlock((ch, cH, cW), ch, ch, residual)))
            prev = ch
        self.conv_out = nn.Conv2d(prev, C, 3, 1, 1)

    def forward(self, x, t):
        n = t.shape[0]
        t = self.pe(t)
        skips = []
        for pe_linear, encoder, down in zip(self.pe_linears_en, self.encoders, self.downs):
            x = encoder(x + pe_linear(t).reshape(n, -1, 1, 1))
            skips.append(x)
            x = down(x)
        x = self.mid(x + self.pe_mid(t).reshape(n, -1, 1, 1))
        for pe_linear, decoder, up, skip in zip(self.pe_linears_de, self.decoders, self.ups, skips[::-1]):
            pe = pe_linear(t).reshape(n, -1, 1, 1)
            x = up(x)
            pad_x = skip.shape[2] - x.shape[2]
            pad_y = skip.shape[3] - x.shape[3]
            x = F.pad(x, (pad_x // 2, pad_x - pad_x // 2, pad_y // 2, pad_y - pad_y // 2))
            x = decoder(torch.cat((skip, x), dim=1) + pe)
        return self.conv_out(x)


class DDPM:
    def __init__(self, device, n_steps=1000, min_beta=1e-4, max_beta=0.02):
        self.betas = torch.linspace(min_beta, max_beta, n_steps).to(device)
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)

    def sample_forward(self, x, t, eps):
        ab = self.alpha_bars[t].reshape(-1, 1, 1, 1)
        return eps * torch.sqrt(1 - ab) + torch.sqrt(ab) * x

    def loss(self, net, x0, t, eps):
        """The training loss: MSE between the noise and the network's prediction of it."""
        return F.mse_loss(net(self.sample_forward(x0, t, eps), t), eps)

    def train_step(self, net, opt, x0):
        """One step of the demo's loop: t ~ U{0..n_steps-1}, eps ~ N(0, 1), Adam. Returns the loss."""
        t = torch.randint(0, len(self.betas), (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        loss = self.loss(net, x0, t, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def sample_backward_step(self, net, x_t, t, simple_var=True):
        """One reverse step of the demo's sampler (t is a Python int)."""
        n = x_t.shape[0]
        eps = net(x_t, torch.full((n,), t, dtype=torch.long, device=x_t.device))
        if t == 0:
            noise = 0
        else:
            var = self.betas[t] if simple_var else (1 - self.alpha_bars[t - 1]) / (1 - self.alpha_bars[t]) * self.betas[t]
            noise = torch.randn_like(x_t) * torch.sqrt(var)
        mean = (x_t - (1 - self.alphas[t]) / torch.sqrt(1 - self.alpha_bars[t]) * eps) / torch.sqrt(self.alphas[t])
        return mean + noise
